package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/flowgen/flowgen/backends/backendtest"
	"github.com/flowgen/flowgen/backends/sqlite"
	"github.com/flowgen/flowgen/runtime/backend"
)

// TestConformance runs the shared backend suite on a fresh file per case.
func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Config{
		Open: func(t *testing.T) (backend.Backend, string) {
			path := filepath.Join(t.TempDir(), "flow.db")
			b, err := sqlite.New(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b, "sqlite://" + path
		},
		Durable: true,
	})
}
