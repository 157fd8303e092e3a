package azure

import (
	"context"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"
)

// create creates the queue, the poison queue, the database and the two containers
// (partition key /runId) when they are missing (create=1).
func (b *Backend) create(ctx context.Context) error {
	for _, q := range []struct {
		name   string
		create func(context.Context) error
	}{
		{b.opts.Queue, func(ctx context.Context) error { _, err := b.queue.Create(ctx, nil); return err }},
		{b.opts.Poison, func(ctx context.Context) error { _, err := b.poison.Create(ctx, nil); return err }},
	} {
		if err := q.create(ctx); err != nil && !queueerror.HasCode(err, queueerror.QueueAlreadyExists) && statusCode(err) != 409 {
			return fmt.Errorf("azure: create queue %s: %w", q.name, err)
		}
	}
	if _, err := b.cosmos.CreateDatabase(ctx, azcosmos.DatabaseProperties{ID: b.opts.Database}, nil); err != nil && statusCode(err) != 409 {
		return fmt.Errorf("azure: create Cosmos DB database %s: %w", b.opts.Database, err)
	}
	db, err := b.cosmos.NewDatabase(b.opts.Database)
	if err != nil {
		return err
	}
	for c, indexed := range map[string][]string{
		b.opts.Contexts: {"/runId/?"},
		b.opts.Statuses: {"/status/?", "/workflow/?", "/lastUpdated/?", "/created/?"},
	} {
		props := azcosmos.ContainerProperties{ID: c, PartitionKeyDefinition: azcosmos.PartitionKeyDefinition{Paths: []string{"/runId"}},
			IndexingPolicy: indexing(indexed)}
		if _, err := db.CreateContainer(ctx, props, nil); err != nil && statusCode(err) != 409 {
			return fmt.Errorf("azure: create Cosmos DB container %s: %w", c, err)
		}
	}
	return nil
}

// drop deletes the queues and containers this backend uses (tests), and the Redis keys
// of its prefix are left to the Redis server's lifetime.
func (b *Backend) drop(ctx context.Context) error {
	var first error
	note := func(err error) {
		if err != nil && first == nil && statusCode(err) != 404 {
			first = err
		}
	}
	_, err := b.queue.Delete(ctx, nil)
	note(err)
	_, err = b.poison.Delete(ctx, nil)
	note(err)
	_, err = b.contexts.Delete(ctx, nil)
	note(err)
	_, err = b.statuses.Delete(ctx, nil)
	note(err)
	return first
}

// indexing is a consistent indexing policy of only the given paths: the values and
// results are never indexed, which saves request units on every write.
func indexing(paths []string) *azcosmos.IndexingPolicy {
	p := &azcosmos.IndexingPolicy{Automatic: true, IndexingMode: azcosmos.IndexingModeConsistent,
		ExcludedPaths: []azcosmos.ExcludedPath{{Path: "/*"}}}
	for _, path := range paths {
		p.IncludedPaths = append(p.IncludedPaths, azcosmos.IncludedPath{Path: path})
	}
	return p
}
