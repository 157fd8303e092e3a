package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	stypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// resolveQueue returns the URL of the queue named name (or name itself, when it is a URL).
func (b *Backend) resolveQueue(ctx context.Context, name string) (string, error) {
	if strings.Contains(name, "://") {
		return name, nil
	}
	out, err := b.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: awssdk.String(name)})
	if err != nil {
		return "", fmt.Errorf("aws: find SQS queue %q (create it with `flowgen infra aws`, or add create=1 to the URL): %w", name, err)
	}
	return *out.QueueUrl, nil
}

// create creates the queues and tables that are missing (create=1).
func (b *Backend) create(ctx context.Context) error {
	o := b.opts
	if o.DLQ != "" && !strings.Contains(o.DLQ, "://") {
		out, err := b.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(o.DLQ),
			Attributes: map[string]string{"MessageRetentionPeriod": "1209600"}})
		if err != nil {
			return fmt.Errorf("aws: create dead-letter queue %q: %w", o.DLQ, err)
		}
		b.dlqURL = *out.QueueUrl
	}
	if !strings.Contains(o.Queue, "://") {
		attrs := map[string]string{"VisibilityTimeout": "30"}
		if b.dlqURL != "" && o.MaxReceives > 0 {
			arn, err := b.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: &b.dlqURL,
				AttributeNames: []stypes.QueueAttributeName{stypes.QueueAttributeNameQueueArn}})
			if err != nil {
				return fmt.Errorf("aws: read the ARN of queue %q: %w", o.DLQ, err)
			}
			policy, _ := json.Marshal(map[string]string{"deadLetterTargetArn": arn.Attributes["QueueArn"],
				"maxReceiveCount": strconv.Itoa(o.MaxReceives)})
			attrs["RedrivePolicy"] = string(policy)
		}
		out, err := b.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(o.Queue), Attributes: attrs})
		if err != nil {
			return fmt.Errorf("aws: create queue %q: %w", o.Queue, err)
		}
		b.queueURL = *out.QueueUrl
	}
	s := dtypes.ScalarAttributeTypeS
	n := dtypes.ScalarAttributeTypeN
	tables := []*dynamodb.CreateTableInput{
		{
			TableName:            awssdk.String(o.Statuses),
			AttributeDefinitions: attrDefs("runId", s, "status", s, "lastUpdated", n),
			KeySchema:            keySchema("runId", ""),
			GlobalSecondaryIndexes: []dtypes.GlobalSecondaryIndex{{
				IndexName: awssdk.String(StatusIndex),
				KeySchema: keySchema("status", "lastUpdated"),
				// The index serves candidates: keys, plus what ListRuns filters and
				// checks on (the result stays out of the index's writes).
				Projection: &dtypes.Projection{ProjectionType: dtypes.ProjectionTypeInclude, NonKeyAttributes: IndexAttributes},
			}},
		},
		{
			TableName:            awssdk.String(o.Contexts),
			AttributeDefinitions: attrDefs("runId", s, "ref", s),
			KeySchema:            keySchema("runId", "ref"),
		},
		{
			TableName:            awssdk.String(o.Coordination),
			AttributeDefinitions: attrDefs("pk", s),
			KeySchema:            keySchema("pk", ""),
		},
	}
	for _, in := range tables {
		in.BillingMode = dtypes.BillingModePayPerRequest
		if _, err := b.ddb.CreateTable(ctx, in); err != nil && !isCode(err, "ResourceInUseException") {
			return fmt.Errorf("aws: create table %q: %w", *in.TableName, err)
		}
	}
	for _, in := range tables {
		if err := b.waitActive(ctx, *in.TableName); err != nil {
			return err
		}
	}
	// TTL (attribute expiresAt) on the three tables. Servers that lack UpdateTimeToLive
	// (dynalite) refuse it; ExpireRuns does the same work there, so that is not an error.
	for _, tbl := range []string{o.Coordination, o.Statuses, o.Contexts} {
		_, _ = b.ddb.UpdateTimeToLive(ctx, &dynamodb.UpdateTimeToLiveInput{TableName: awssdk.String(tbl),
			TimeToLiveSpecification: &dtypes.TimeToLiveSpecification{AttributeName: awssdk.String(TTLAttribute), Enabled: awssdk.Bool(true)}})
	}
	return nil
}

// waitActive waits until table and its indexes are active.
func (b *Backend) waitActive(ctx context.Context, table string) error {
	for {
		out, err := b.ddb.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: &table})
		if err != nil {
			return fmt.Errorf("aws: describe table %q: %w", table, err)
		}
		ready := out.Table.TableStatus == dtypes.TableStatusActive
		for _, g := range out.Table.GlobalSecondaryIndexes {
			ready = ready && g.IndexStatus == dtypes.IndexStatusActive
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("aws: table %q is not active yet: %w", table, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func attrDefs(kv ...any) []dtypes.AttributeDefinition {
	var out []dtypes.AttributeDefinition
	for i := 0; i < len(kv); i += 2 {
		out = append(out, dtypes.AttributeDefinition{AttributeName: awssdk.String(kv[i].(string)),
			AttributeType: kv[i+1].(dtypes.ScalarAttributeType)})
	}
	return out
}

func keySchema(hash, rng string) []dtypes.KeySchemaElement {
	ks := []dtypes.KeySchemaElement{{AttributeName: awssdk.String(hash), KeyType: dtypes.KeyTypeHash}}
	if rng != "" {
		ks = append(ks, dtypes.KeySchemaElement{AttributeName: awssdk.String(rng), KeyType: dtypes.KeyTypeRange})
	}
	return ks
}

// drop deletes the backend's queues and tables (tests clean up with it).
func (b *Backend) drop(ctx context.Context) error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for _, q := range []string{b.queueURL, b.dlqURL} {
		if q != "" {
			_, err := b.sqs.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: awssdk.String(q)})
			keep(err)
		}
	}
	for _, t := range []string{b.opts.Statuses, b.opts.Contexts, b.opts.Coordination} {
		_, err := b.ddb.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: awssdk.String(t)})
		keep(err)
	}
	return first
}
