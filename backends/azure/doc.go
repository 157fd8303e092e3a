// Package azure is the Azure backend, registered as "azure://": jobs in an Azure Storage
// Queue (with a poison queue), state values and run status in Cosmos DB (NoSQL API), and
// the coordination of every transition in Redis, through the Redis backend's store
// (package backends/redis), with the same exactly-once guarantees.
//
// # URL
//
//	azure://?queue=flowgen-jobs&database=flowgen&contexts=contexts&statuses=statuses&redis=redis://host:6379/0
//
// Every parameter is optional; the defaults are the names `flowgen infra azure` creates
// (DefaultQueue, DefaultDatabase, DefaultContexts, DefaultStatuses):
//
//   - queue: the job queue (default flowgen-jobs); poison: the poison queue (default
//     the queue's name + "-poison", the name Azure Functions uses).
//   - database, contexts, statuses: the Cosmos DB database and its two containers, both
//     partitioned by /runId (defaults flowgen, contexts, statuses).
//   - storage, cosmos, redis: the connection strings of Azure Storage and Cosmos DB and
//     the redis:// or rediss:// URL of the Redis; without them, the environment's
//     AZURE_STORAGE_CONNECTION_STRING, COSMOS_DB_CONNECTION_STRING and REDIS_URL.
//   - queue_endpoint, cosmos_endpoint: Microsoft Entra ID instead of keys. Without a
//     connection string for a service (a connection string always wins, even one from
//     the environment over an endpoint in the URL), the backend uses its endpoint — the queue service URL
//     (https://ACCOUNT.queue.core.windows.net/) and the Cosmos DB account endpoint
//     (https://ACCOUNT.documents.azure.com:443/), percent-encoded in the URL, or the
//     environment's AZURE_STORAGE_QUEUE_ENDPOINT and COSMOS_DB_ENDPOINT — with a token
//     credential: Options.Credential when a caller of New sets it, else azidentity's
//     DefaultAzureCredential (environment variables, workload identity, managed
//     identity, Azure CLI). The identity needs the Storage Queue Data Contributor role
//     and Cosmos DB's Built-in Data Contributor SQL role (`flowgen infra azure` prints
//     both assignments). That Cosmos DB role cannot create databases or containers:
//     with cosmos_endpoint on the real service, create them with `flowgen infra azure`
//     and leave create=1 off.
//   - prefix: the prefix of the Redis keys (default "flowgen:azure:"); deployments with
//     different prefixes share a Redis without seeing each other.
//   - inline: values of at least this many bytes go to Cosmos DB (default 64); smaller
//     ones (counters, arrival marks, claims) stay in Redis.
//   - touch: how often, at most, a run's progress refreshes the lastUpdated of its status
//     item (default 1s); 0 refreshes it on every transition.
//   - max_deliveries: a job dequeued this many times goes to the poison queue
//     (default 50), a backstop behind the runtime's own limits (attempts, the worker's
//     -max-deliveries), which act first.
//   - create=1 creates the queues, the database and the containers when missing
//     (development and tests; off by default).
//   - cosmos_insecure_tls=1 accepts any TLS certificate from Cosmos DB: only for the
//     local emulator's self-signed certificate; never on by default.
//
// # Design
//
// Redis is the truth of a run: its record (status, input, result, …) and its state —
// the completion record of each node (output and routing decision), join arrivals,
// claims, the count of open nodes. CreateRun and Update run through the Redis backend's
// CreateRun and Update, whose Lua-checked optimistic transaction is the atomic
// transition: a node's completion is recorded once, an arrival counts once, a
// successor is claimed once, and the run's status flips once. This backend wraps the
// transition's backend.Tx:
//
//   - Values of at least inline bytes (node outputs, inside completion records) are
//     written to the contexts container, each as an immutable item whose id is a hash
//     of the run (and its creation time), the key and the value, after the transition
//     function returns and before Redis commits; Redis holds a short reference. A
//     transition that runs again after a conflict writes the same item (409 Conflict
//     means it is there already), and an item whose transition lost is never
//     referenced. Reads resolve references with point reads, cached (items never
//     change). Values are base64 inside the item, so any bytes round-trip.
//   - Enqueue holds the jobs back, and they are sent to the queue only once Redis has
//     committed. A crash between the commit and the send leaves successors claimed but
//     never enqueued: the reconciler (Worker.Reconcile, through ListRuns and Update)
//     enqueues claimed-but-unfinished nodes again. The Redis backend's own queue is not
//     used.
//
// The statuses container holds one item per run (id = run id): status, lastUpdated
// (unix ms), updatedAt, workflow, version, created, and the result or failedNode and
// reason, parent and metadata. It mirrors the Redis record: CreateRun writes it before
// the Redis create (so no run lacks one); an Update that changes the status, result or
// reason rewrites it, and progress refreshes its lastUpdated at most every touch. Every
// rewrite reads the Redis record after the item version it replaces and writes with
// IfMatch on that version's ETag (412: read both again), never a blind upsert, so
// concurrent writers converge on the newest record. Read, Await and Status read Redis.
//
// ListRuns runs a parameterised query on the statuses container (status, workflow,
// lastUpdated < @before), page by page with continuation tokens, then checks every
// candidate against Redis: runs that no longer match are left out, and items that lag
// behind their record are repaired. The gateway cannot ORDER BY across partitions, so
// runs are sorted newest first here. An item's lastUpdated is never later than its
// run's last change, so the reconciler's query (running, not updated since T) finds
// every stalled run; a query for a final status also takes running items as
// candidates, since a run's end reaches its item just after the commit. ScannedName is
// "scannedItems".
//
// WaitRun is the Redis backend's (pub/sub). ExpireRuns deletes finished runs through
// the Redis backend's ExpireRuns, then the status items and value items of the runs it
// deleted. Redis keeps runs until then (no TTL), as long as their items.
//
// # Queue
//
// A job is a message of JSON text (ids only, never outputs). Dequeue takes up to 32
// messages per call with the lease as their visibility timeout (whole seconds); Queue
// Storage has no long poll, so an empty queue is polled again after a pause growing
// from 10ms to 250ms, cut short by an Enqueue of the same process. Deliveries is the
// DequeueCount plus the deliveries of earlier copies carried in the body (a job handed
// back unseen, or re-delayed). Extend is UpdateMessage, whose new pop receipt the
// delivery keeps; Ack is DeleteMessage with the pop receipt (a message already gone is
// not an error); Requeue sends the next job, then deletes; a delay is the visibility
// timeout on enqueue, at most 7 days, and a longer one is sent again when it surfaces.
// Messages never expire (time-to-live -1). DeadLetter, messages that are not jobs and
// messages dequeued more than max_deliveries times go to the poison queue as JSON
// {message, reason, at}. Queue Storage neither orders nor prioritises: Job.Priority is
// carried but not honoured.
//
// # Azure Functions
//
// The backend implements backend.MessageDecoder, so Worker.HandleMessage runs the job
// of one message for a Functions queue trigger on the job queue: the trigger receives
// and deletes the message, HandleMessage returns an error for a message to retry, and
// a job that keeps failing is dead-lettered to the poison queue. Bodies are plain JSON;
// set "extensions": {"queues": {"messageEncoding": "none"}} in host.json (a base64 body
// is decoded too). The trigger's visibility timeout must exceed the longest node.
//
// # Limits
//
// Values, run inputs and results above MaxValueSize (1 MiB; a Cosmos DB item holds
// 2 MB) fail with an error wrapping backend.ErrTooLarge. On a Redis Cluster (a redis=
// URL with cluster=true and addr= seed nodes), the coordination keys share one slot,
// named by the prefix as a hash tag (see package redis).
//
// # Local servers
//
// The tests run against Azurite (queues), @vercel/cosmosdb-server and redis-server
// (scripts/services.sh start azure). The token path runs against the Cosmos server over
// HTTPS, which ignores the token, and a second Azurite over HTTPS with --oauth basic,
// which checks a bearer token's issuer, audience and lifetime but not its signature
// (azcore sends no token over plain http); neither checks roles. What the Cosmos DB
// server does not reproduce, and why the code is correct anyway:
//
//   - It charges 1 request unit per request and never throttles (429) or splits
//     partitions: cosmos_ru from it is a call count, not a bill; on the real service the
//     SDK's retry policy retries 429s after the delay the service names.
//   - It ignores the partition key header of queries: every query that means one
//     partition says so in SQL too (c.runId = @runId).
//   - It has no transactional batch: the design needs none (Redis is the transaction).
//   - It answers a point read of a missing item with 500 unless patched (services.sh
//     patches it to 404, which the real service answers).
//   - Indexing policies and consistency levels cannot be checked against it; queries
//     use only the paths the policy of create=1 and `flowgen infra azure` indexes
//     (runId; status, workflow, lastUpdated). Under the service's session consistency
//     another process's point read of a value item just written may reach a replica
//     that lacks it: a 404 for an item that a committed reference names is retried for
//     about two seconds. Status items need no such care: Redis is read for the truth,
//     and writes are conditional on the ETag, which the service checks on the primary.
//
// Azurite has no long poll either (nor has the real service), and its in-memory GC
// deletes one extent per message written with a linear scan each, every minute, which
// blocks it for minutes under test load: services.sh makes it run once a day. Neither
// server's speed says anything about the real services'.
package azure
