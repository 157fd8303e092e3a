package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered SQL file of migrations/.
type migration struct {
	version int
	name    string
	sql     string
}

// ErrSchemaTooNew is returned by New when the database's schema was migrated by a newer
// flowgen than this binary: it would not understand the tables.
var ErrSchemaTooNew = errors.New("database schema is newer than this flowgen binary")

// ErrSchemaOutdated is returned by New, with migrations turned off, when the database's
// schema is older than this binary's.
var ErrSchemaOutdated = errors.New("database schema is older than this flowgen binary")

// migrations returns the embedded migrations in order. Their names are NNNN_name.sql,
// numbered from 1 without gaps.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, name, ok := strings.Cut(strings.TrimSuffix(e.Name(), ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %s: name is not NNNN_name.sql", e.Name())
		}
		data, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(data)})
	}
	for i, m := range ms { // ReadDir sorts by name
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %04d_%s: want version %d (versions start at 1, without gaps)", m.version, m.name, i+1)
		}
	}
	return ms, nil
}

// SchemaVersion is the schema version this binary's migrations lead to.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		panic(err) // the embedded files are checked by the tests
	}
	return len(ms)
}

// lockKey is the advisory lock key serializing migrations of one schema.
func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("flowgen migrate " + schema))
	return int64(h.Sum64())
}

// migrate brings schema to this binary's version, or with apply false only checks that
// it is there. Processes opening the backend at once take turns on an advisory lock, so
// each migration runs once.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string, apply bool) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: connect: %w", err)
	}
	defer conn.Release()
	key := lockKey(schema)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		return fmt.Errorf("postgres: migrate schema %q: take the migration lock: %w", schema, err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", key); err != nil {
			conn.Conn().Close(uctx) // closing the session releases the lock
		}
	}()

	ident := pgx.Identifier{schema}.Sanitize()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: migrate schema %q: %w", schema, err)
	}
	if !exists {
		if !apply {
			return fmt.Errorf("postgres: schema %q does not exist and migrations are off (migrate=false): %w", schema, ErrSchemaOutdated)
		}
		if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+ident); err != nil {
			return fmt.Errorf("postgres: create schema %q: %w", schema, err)
		}
	}
	if apply {
		if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+ident+`.schema_version (
			version integer PRIMARY KEY,
			name    text NOT NULL,
			applied timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("postgres: migrate schema %q: create schema_version: %w", schema, err)
		}
	}
	var current int
	err = conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+ident+".schema_version").Scan(&current)
	if err != nil {
		return fmt.Errorf("postgres: schema %q: read its version: %w", schema, err)
	}
	switch {
	case current > len(ms):
		return fmt.Errorf("postgres: schema %q is at version %d but this binary knows versions up to %d: upgrade flowgen: %w",
			schema, current, len(ms), ErrSchemaTooNew)
	case current < len(ms) && !apply:
		return fmt.Errorf("postgres: schema %q is at version %d, this binary needs %d, and migrations are off (migrate=false): %w",
			schema, current, len(ms), ErrSchemaOutdated)
	}
	for _, m := range ms[current:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+ident); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+ident+".schema_version (version, name) VALUES ($1, $2)", m.version, m.name)
			return err
		})
		if err != nil {
			return fmt.Errorf("postgres: schema %q: migration %04d_%s: %w", schema, m.version, m.name, err)
		}
	}
	return nil
}
