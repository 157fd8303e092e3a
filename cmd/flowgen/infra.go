package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/template"

	"github.com/flowgen/flowgen/backends/aws"
)

// infraCmd prints the commands and the Terraform that create a backend's cloud
// resources: `flowgen infra aws|azure [flags]`.
func infraCmd(args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprint(stderr, "Usage: flowgen infra aws|azure [flags]   (flowgen infra aws -h, flowgen infra azure -h)\n\n"+
			"Prints the CLI commands and the Terraform that create what a backend uses, with the\n"+
			"names the backend uses when its URL names none.\n")
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		usage()
		if len(args) == 0 {
			return errors.New("infra: name a cloud: flowgen infra aws|azure")
		}
		return flag.ErrHelp
	}
	cloud, args := args[0], args[1:]
	switch cloud {
	case "aws":
		return infraAWS(args, stdout, stderr)
	case "azure":
		return infraAzure(args, stdout, stderr)
	}
	return fmt.Errorf("infra: unknown cloud %q (known: aws, azure)", cloud)
}

// infraAWS prints the AWS resources: `flowgen infra aws [flags]`.
func infraAWS(args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprint(stderr, "Usage: flowgen infra aws [-format cli|terraform|both] [-queue NAME] [-dlq NAME] [-contexts NAME]\n"+
			"                        [-statuses NAME] [-coordination NAME] [-max-receives N] [-region REGION]\n\n"+
			"Prints the AWS CLI commands and the Terraform that create what the aws:// backend uses:\n"+
			"an SQS queue with a dead-letter queue, and the three DynamoDB tables with their keys,\n"+
			"the statuses table's status-lastUpdated index, and TTL on expiresAt on all three (the\n"+
			"backend sets it on finished runs; its URL's ttl= says when). The defaults are the\n"+
			"names the backend uses when its URL names none.\n\n")
	}
	fs := flag.NewFlagSet("flowgen infra aws", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The defaults are backends/aws's.
	c := awsInfra{TTLAttribute: aws.TTLAttribute, StatusIndex: aws.StatusIndex, IndexAttributes: aws.IndexAttributes}
	format := fs.String("format", "both", "what to print: `cli` (AWS CLI commands), terraform, or both")
	fs.StringVar(&c.Queue, "queue", aws.DefaultQueue, "SQS job queue `name` (URL: queue=)")
	fs.StringVar(&c.DLQ, "dlq", "", "dead-letter queue `name` (URL: dlq=; default: the queue's name + \"-dlq\")")
	fs.StringVar(&c.Contexts, "contexts", aws.DefaultContextsTable, "DynamoDB table `name` for large state values, by reference (URL: contexts=)")
	fs.StringVar(&c.Statuses, "statuses", aws.DefaultStatusesTable, "DynamoDB table `name` for the queryable status mirror of runs (URL: statuses=)")
	fs.StringVar(&c.Coordination, "coordination", aws.DefaultCoordinationTable, "DynamoDB table `name` for the authoritative, versioned runs (URL: coordination=)")
	fs.IntVar(&c.MaxReceives, "max-receives", aws.DefaultMaxReceives, "redrive policy's maxReceiveCount: receives before SQS moves a message to the dead-letter queue")
	fs.StringVar(&c.Region, "region", "", "AWS `region` for the CLI commands (default: the CLI's own)")
	fs.Usage = func() { usage(); fs.PrintDefaults() }
	if err := parse(fs, args); err != nil {
		return err
	}
	if c.DLQ == "" {
		c.DLQ = c.Queue + "-dlq"
	}
	if c.Region != "" {
		c.RegionFlag = " --region " + c.Region
	}
	c.Ident = func(s string) string { return strings.NewReplacer("-", "_", ".", "_").Replace(s) }
	return printInfra(stdout, *format, awsCLI, awsTerraform, c.Ident, c)
}

// printInfra prints the CLI template, the Terraform template or both, as format says.
func printInfra(stdout io.Writer, format, cli, terraform string, ident func(string) string, data any) error {
	var tmpls []string
	switch format {
	case "cli":
		tmpls = []string{cli}
	case "terraform":
		tmpls = []string{terraform}
	case "both":
		tmpls = []string{cli, terraform}
	default:
		return fmt.Errorf("infra: -format %q: want cli, terraform or both", format)
	}
	for i, src := range tmpls {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		t := template.Must(template.New("infra").Funcs(template.FuncMap{"ident": ident, "join": strings.Join}).Parse(src))
		if err := t.Execute(stdout, data); err != nil {
			return err
		}
	}
	return nil
}

// awsInfra is what the AWS templates print.
type awsInfra struct {
	Queue, DLQ, Contexts, Statuses, Coordination string
	TTLAttribute, StatusIndex                    string
	IndexAttributes                              []string
	MaxReceives                                  int
	Region, RegionFlag                           string
	Ident                                        func(string) string
}

const awsCLI = `# AWS CLI: the resources of the aws:// backend (flowgen infra aws -format cli).
# Worker URL: aws://?queue={{.Queue}}&dlq={{.DLQ}}&contexts={{.Contexts}}&statuses={{.Statuses}}&coordination={{.Coordination}}
set -e
DLQ_URL=$(aws sqs create-queue{{.RegionFlag}} --queue-name {{.DLQ}} \
  --attributes MessageRetentionPeriod=1209600 --query QueueUrl --output text)
DLQ_ARN=$(aws sqs get-queue-attributes{{.RegionFlag}} --queue-url "$DLQ_URL" \
  --attribute-names QueueArn --query Attributes.QueueArn --output text)
aws sqs create-queue{{.RegionFlag}} --queue-name {{.Queue}} --attributes "{\"VisibilityTimeout\":\"30\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"$DLQ_ARN\\\",\\\"maxReceiveCount\\\":\\\"{{.MaxReceives}}\\\"}\"}"

# Coordination: one item per run, the authoritative run (record, state, version);
# every transition is one conditional write of it. TTL deletes finished runs.
aws dynamodb create-table{{.RegionFlag}} --table-name {{.Coordination}} \
  --attribute-definitions AttributeName=pk,AttributeType=S \
  --key-schema AttributeName=pk,KeyType=HASH \
  --billing-mode PAY_PER_REQUEST

# Statuses: the queryable mirror of each run (status, lastUpdated, result or reason),
# with the index of the reconciler's query for stalled runs (status, lastUpdated).
aws dynamodb create-table{{.RegionFlag}} --table-name {{.Statuses}} \
  --attribute-definitions AttributeName=runId,AttributeType=S AttributeName=status,AttributeType=S AttributeName=lastUpdated,AttributeType=N \
  --key-schema AttributeName=runId,KeyType=HASH \
  --global-secondary-indexes 'IndexName={{.StatusIndex}},KeySchema=[{AttributeName=status,KeyType=HASH},{AttributeName=lastUpdated,KeyType=RANGE}],Projection={ProjectionType=INCLUDE,NonKeyAttributes=[{{join .IndexAttributes ","}}]}' \
  --billing-mode PAY_PER_REQUEST

# Contexts: state values too large for the coordination item, by reference.
aws dynamodb create-table{{.RegionFlag}} --table-name {{.Contexts}} \
  --attribute-definitions AttributeName=runId,AttributeType=S AttributeName=ref,AttributeType=S \
  --key-schema AttributeName=runId,KeyType=HASH AttributeName=ref,KeyType=RANGE \
  --billing-mode PAY_PER_REQUEST

# TTL on {{.TTLAttribute}} (Unix seconds), which the backend sets on finished runs.
for t in {{.Coordination}} {{.Statuses}} {{.Contexts}}; do
  aws dynamodb wait table-exists{{.RegionFlag}} --table-name "$t"
  aws dynamodb update-time-to-live{{.RegionFlag}} --table-name "$t" \
    --time-to-live-specification Enabled=true,AttributeName={{.TTLAttribute}}
done
`

const awsTerraform = `# Terraform: the resources of the aws:// backend (flowgen infra aws -format terraform).
resource "aws_sqs_queue" "{{ident .DLQ}}" {
  name                      = "{{.DLQ}}"
  message_retention_seconds = 1209600
}

resource "aws_sqs_queue" "{{ident .Queue}}" {
  name                       = "{{.Queue}}"
  visibility_timeout_seconds = 30
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.{{ident .DLQ}}.arn
    maxReceiveCount     = {{.MaxReceives}}
  })
}

# Statuses: the queryable mirror of each run, with the reconciler's index.
resource "aws_dynamodb_table" "{{ident .Statuses}}" {
  name         = "{{.Statuses}}"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "runId"

  attribute {
    name = "runId"
    type = "S"
  }
  attribute {
    name = "status"
    type = "S"
  }
  attribute {
    name = "lastUpdated"
    type = "N"
  }

  global_secondary_index {
    name            = "{{.StatusIndex}}"
    hash_key        = "status"
    range_key       = "lastUpdated"
    projection_type    = "INCLUDE"
    non_key_attributes = [{{range $i, $a := .IndexAttributes}}{{if $i}}, {{end}}"{{$a}}"{{end}}]
  }

  ttl {
    attribute_name = "{{.TTLAttribute}}"
    enabled        = true
  }
}

# Contexts: state values too large for the coordination item, by reference.
resource "aws_dynamodb_table" "{{ident .Contexts}}" {
  name         = "{{.Contexts}}"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "runId"
  range_key    = "ref"

  attribute {
    name = "runId"
    type = "S"
  }
  attribute {
    name = "ref"
    type = "S"
  }

  ttl {
    attribute_name = "{{.TTLAttribute}}"
    enabled        = true
  }
}

# Coordination: the authoritative, versioned run; TTL deletes finished runs.
resource "aws_dynamodb_table" "{{ident .Coordination}}" {
  name         = "{{.Coordination}}"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "{{.TTLAttribute}}"
    enabled        = true
  }
}
`
