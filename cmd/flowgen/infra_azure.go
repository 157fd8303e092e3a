package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// infraAzure prints the Azure resources: `flowgen infra azure [flags]`.
func infraAzure(args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprint(stderr, "Usage: flowgen infra azure [-format cli|terraform|both] [-resource-group NAME] [-location REGION]\n"+
			"                          [-storage-account NAME] [-queue NAME] [-poison NAME] [-cosmos-account NAME]\n"+
			"                          [-database NAME] [-contexts NAME] [-statuses NAME] [-redis NAME]\n\n"+
			"Prints the az CLI commands and the Terraform that create what the azure:// backend uses:\n"+
			"a storage account with the job queue and its poison queue, a Cosmos DB (NoSQL) account\n"+
			"with a database and the contexts and statuses containers (partition key /runId), and\n"+
			"an Azure Cache for Redis (non-clustered) for the coordination. The defaults are the\n"+
			"names the backend uses when its URL names none.\n\n")
	}
	fs := flag.NewFlagSet("flowgen infra azure", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The defaults match backends/azure (DefaultQueue, DefaultDatabase, …).
	c := azureInfra{}
	format := fs.String("format", "both", "what to print: `cli` (az CLI commands), terraform, or both")
	fs.StringVar(&c.Group, "resource-group", "flowgen-rg", "resource group `name`")
	fs.StringVar(&c.Location, "location", "eastus", "Azure `region`")
	fs.StringVar(&c.Storage, "storage-account", "flowgenstorage", "storage account `name` (3-24 lowercase letters and digits, globally unique)")
	fs.StringVar(&c.Queue, "queue", "flowgen-jobs", "job queue `name` (URL: queue=)")
	fs.StringVar(&c.Poison, "poison", "", "poison queue `name` (URL: poison=; default: the queue's name + \"-poison\")")
	fs.StringVar(&c.Cosmos, "cosmos-account", "flowgen-cosmos", "Cosmos DB account `name` (globally unique)")
	fs.StringVar(&c.Database, "database", "flowgen", "Cosmos DB database `name` (URL: database=)")
	fs.StringVar(&c.Contexts, "contexts", "contexts", "container `name` for state values (URL: contexts=)")
	fs.StringVar(&c.Statuses, "statuses", "statuses", "container `name` for run status items (URL: statuses=)")
	fs.StringVar(&c.Redis, "redis", "flowgen-redis", "Azure Cache for Redis `name` (globally unique)")
	fs.Usage = func() { usage(); fs.PrintDefaults() }
	if err := parse(fs, args); err != nil {
		return err
	}
	if c.Poison == "" {
		c.Poison = c.Queue + "-poison"
	}
	c.Ident = func(s string) string { return strings.NewReplacer("-", "_", ".", "_").Replace(s) }
	return printInfra(stdout, *format, azureCLI, azureTerraform, c.Ident, c)
}

// azureInfra is what the Azure templates print.
type azureInfra struct {
	Group, Location, Storage, Queue, Poison string
	Cosmos, Database, Contexts, Statuses    string
	Redis                                   string
	Ident                                   func(string) string
}

const azureCLI = `# az CLI: the resources of the azure:// backend (flowgen infra azure -format cli).
# Worker URL: azure://?queue={{.Queue}}&poison={{.Poison}}&database={{.Database}}&contexts={{.Contexts}}&statuses={{.Statuses}}
# with the connection strings printed at the end in the environment, or, with Microsoft
# Entra ID instead of keys (managed identity, workload identity, az login), without
# them and with the endpoints (URL: queue_endpoint= and cosmos_endpoint=, percent-encoded):
#   export AZURE_STORAGE_QUEUE_ENDPOINT=https://{{.Storage}}.queue.core.windows.net/
#   export COSMOS_DB_ENDPOINT=https://{{.Cosmos}}.documents.azure.com:443/
# and the identity granted the roles at the end.
set -e
az group create --name {{.Group}} --location {{.Location}}

# Jobs: a queue, and the poison queue for jobs that cannot run.
az storage account create --name {{.Storage}} --resource-group {{.Group}} --location {{.Location}} \
  --sku Standard_LRS --kind StorageV2 --min-tls-version TLS1_2
az storage queue create --name {{.Queue}} --account-name {{.Storage}} --auth-mode login
az storage queue create --name {{.Poison}} --account-name {{.Storage}} --auth-mode login

# Run status and state values: two containers partitioned by /runId. Values are not
# indexed (fewer request units per write); status items are queried by status,
# workflow and lastUpdated.
az cosmosdb create --name {{.Cosmos}} --resource-group {{.Group}} --kind GlobalDocumentDB \
  --locations regionName={{.Location}} failoverPriority=0 isZoneRedundant=false \
  --default-consistency-level Session
az cosmosdb sql database create --account-name {{.Cosmos}} --resource-group {{.Group}} --name {{.Database}}
az cosmosdb sql container create --account-name {{.Cosmos}} --resource-group {{.Group}} \
  --database-name {{.Database}} --name {{.Contexts}} --partition-key-path /runId \
  --idx '{"indexingMode":"consistent","includedPaths":[{"path":"/runId/?"}],"excludedPaths":[{"path":"/*"}]}'
az cosmosdb sql container create --account-name {{.Cosmos}} --resource-group {{.Group}} \
  --database-name {{.Database}} --name {{.Statuses}} --partition-key-path /runId \
  --idx '{"indexingMode":"consistent","includedPaths":[{"path":"/status/?"},{"path":"/workflow/?"},{"path":"/lastUpdated/?"},{"path":"/created/?"}],"excludedPaths":[{"path":"/*"}]}'

# Coordination: Azure Cache for Redis, not clustered (the backend's scripts need one shard).
az redis create --name {{.Redis}} --resource-group {{.Group}} --location {{.Location}} \
  --sku Standard --vm-size C1 --minimum-tls-version 1.2

# The connection strings the backend reads.
export AZURE_STORAGE_CONNECTION_STRING="$(az storage account show-connection-string \
  --name {{.Storage}} --resource-group {{.Group}} --query connectionString --output tsv)"
export COSMOS_DB_CONNECTION_STRING="$(az cosmosdb keys list --type connection-strings \
  --name {{.Cosmos}} --resource-group {{.Group}} --query 'connectionStrings[0].connectionString' --output tsv)"
export REDIS_URL="rediss://:$(az redis list-keys --name {{.Redis}} --resource-group {{.Group}} \
  --query primaryKey --output tsv | sed 's/+/%2B/g; s#/#%2F#g; s/=/%3D/g')@{{.Redis}}.redis.cache.windows.net:6380/0"

# Or Microsoft Entra ID for the queues and Cosmos DB (the endpoints above instead of the
# two connection strings): the roles of the identity PRINCIPAL_ID (object id).
# az role assignment create --role "Storage Queue Data Contributor" --assignee-object-id "$PRINCIPAL_ID" \
#   --scope "$(az storage account show --name {{.Storage}} --resource-group {{.Group}} --query id --output tsv)"
# az cosmosdb sql role assignment create --account-name {{.Cosmos}} --resource-group {{.Group}} \
#   --role-definition-id 00000000-0000-0000-0000-000000000002 --principal-id "$PRINCIPAL_ID" --scope /
`

const azureTerraform = `# Terraform (azurerm 4.x): the resources of the azure:// backend (flowgen infra azure -format terraform).
resource "azurerm_resource_group" "{{ident .Group}}" {
  name     = "{{.Group}}"
  location = "{{.Location}}"
}

resource "azurerm_storage_account" "{{ident .Storage}}" {
  name                     = "{{.Storage}}"
  resource_group_name      = azurerm_resource_group.{{ident .Group}}.name
  location                 = azurerm_resource_group.{{ident .Group}}.location
  account_tier             = "Standard"
  account_replication_type = "LRS"
  min_tls_version          = "TLS1_2"
}

resource "azurerm_storage_queue" "{{ident .Queue}}" {
  name                 = "{{.Queue}}"
  storage_account_name = azurerm_storage_account.{{ident .Storage}}.name
}

resource "azurerm_storage_queue" "{{ident .Poison}}" {
  name                 = "{{.Poison}}"
  storage_account_name = azurerm_storage_account.{{ident .Storage}}.name
}

resource "azurerm_cosmosdb_account" "{{ident .Cosmos}}" {
  name                = "{{.Cosmos}}"
  location            = azurerm_resource_group.{{ident .Group}}.location
  resource_group_name = azurerm_resource_group.{{ident .Group}}.name
  offer_type          = "Standard"
  kind                = "GlobalDocumentDB"

  consistency_policy {
    consistency_level = "Session"
  }

  geo_location {
    location          = azurerm_resource_group.{{ident .Group}}.location
    failover_priority = 0
  }
}

resource "azurerm_cosmosdb_sql_database" "{{ident .Database}}" {
  name                = "{{.Database}}"
  resource_group_name = azurerm_cosmosdb_account.{{ident .Cosmos}}.resource_group_name
  account_name        = azurerm_cosmosdb_account.{{ident .Cosmos}}.name
}

resource "azurerm_cosmosdb_sql_container" "{{ident .Contexts}}" {
  name                = "{{.Contexts}}"
  resource_group_name = azurerm_cosmosdb_account.{{ident .Cosmos}}.resource_group_name
  account_name        = azurerm_cosmosdb_account.{{ident .Cosmos}}.name
  database_name       = azurerm_cosmosdb_sql_database.{{ident .Database}}.name
  partition_key_paths = ["/runId"]

  indexing_policy {
    indexing_mode = "consistent"
    included_path {
      path = "/runId/?"
    }
    excluded_path {
      path = "/*"
    }
  }
}

resource "azurerm_cosmosdb_sql_container" "{{ident .Statuses}}" {
  name                = "{{.Statuses}}"
  resource_group_name = azurerm_cosmosdb_account.{{ident .Cosmos}}.resource_group_name
  account_name        = azurerm_cosmosdb_account.{{ident .Cosmos}}.name
  database_name       = azurerm_cosmosdb_sql_database.{{ident .Database}}.name
  partition_key_paths = ["/runId"]

  indexing_policy {
    indexing_mode = "consistent"
    included_path {
      path = "/status/?"
    }
    included_path {
      path = "/workflow/?"
    }
    included_path {
      path = "/lastUpdated/?"
    }
    included_path {
      path = "/created/?"
    }
    excluded_path {
      path = "/*"
    }
  }
}

resource "azurerm_redis_cache" "{{ident .Redis}}" {
  name                 = "{{.Redis}}"
  location             = azurerm_resource_group.{{ident .Group}}.location
  resource_group_name  = azurerm_resource_group.{{ident .Group}}.name
  capacity             = 1
  family               = "C"
  sku_name             = "Standard"
  minimum_tls_version  = "1.2"
  non_ssl_port_enabled = false
}

output "azure_storage_connection_string" {
  value     = azurerm_storage_account.{{ident .Storage}}.primary_connection_string
  sensitive = true
}

output "cosmos_db_connection_string" {
  value     = azurerm_cosmosdb_account.{{ident .Cosmos}}.primary_sql_connection_string
  sensitive = true
}

# For Microsoft Entra ID instead of the connection strings: the worker URL's
# queue_endpoint= and cosmos_endpoint= (or AZURE_STORAGE_QUEUE_ENDPOINT, COSMOS_DB_ENDPOINT).
output "queue_endpoint" {
  value = azurerm_storage_account.{{ident .Storage}}.primary_queue_endpoint
}

output "cosmos_endpoint" {
  value = azurerm_cosmosdb_account.{{ident .Cosmos}}.endpoint
}

output "redis_url" {
  value     = "rediss://:${urlencode(azurerm_redis_cache.{{ident .Redis}}.primary_access_key)}@${azurerm_redis_cache.{{ident .Redis}}.hostname}:${azurerm_redis_cache.{{ident .Redis}}.ssl_port}/0"
  sensitive = true
}
`
