#!/usr/bin/env bash
# Servers the backend tests need, started on demand, on 127.0.0.1 only:
#   scripts/services.sh start [SERVICE...]   make each service answer; print its export lines
#   scripts/services.sh env [SERVICE...]     print the export lines of services that answer
#   scripts/services.sh status [SERVICE...]  say which services answer
#   scripts/services.sh stop [SERVICE...]    stop the servers this script started
# Services: postgres (FLOWGEN_TEST_POSTGRES), redis (FLOWGEN_TEST_REDIS),
# redis-cluster (FLOWGEN_TEST_REDIS_CLUSTER: three masters),
# aws (FLOWGEN_TEST_AWS: dynalite and local-aws-sqs from npm, kept in .services/npm),
# azure (FLOWGEN_TEST_AZURE, FLOWGEN_TEST_AZURE_TLS and FLOWGEN_TEST_AZURE_QUEUE_TLS:
# Azurite and cosmosdb-server from npm, plus the redis service, which it starts when it
# is not running).
# Without a name, every service. Use it as
#   eval "$(scripts/services.sh start postgres)"
# Export lines go to stdout, everything else to stderr. A service whose variable is set
# and answers is used as it is; otherwise a throwaway server is started in a temp dir on
# a free non-standard port (never the machine's own server), installing the Debian
# package first when it is missing (as root). State lives in .services/ (override with
# FLOWGEN_SERVICES_DIR).
#
# Adding a service NAME: set VAR_NAME (its URL variable), write NAME_answers URL,
# NAME_start_server (start a throwaway server, then save_url NAME URL) and
# NAME_stop_server, and add NAME to SERVICES.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=(postgres redis redis-cluster aws azure)
STATE=${FLOWGEN_SERVICES_DIR:-$PWD/.services}
HOST=127.0.0.1

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }

APT_UPDATED=0
apt_install() { # packages...
	is_root || die "installing $* needs root (apt-get); install it yourself, or run this as root"
	command -v apt-get >/dev/null || die "installing $* needs apt-get (Debian, Ubuntu); install it yourself"
	if [ "$APT_UPDATED" = 0 ]; then
		log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
		APT_UPDATED=1
	fi
	log "apt-get install -y $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# free_port prints a TCP port of 127.0.0.1 that nothing listens on, from 20000-39999.
free_port() {
	local p i
	for i in $(seq 1 50); do
		p=$((20000 + RANDOM % 20000))
		if ! (exec 3<>"/dev/tcp/$HOST/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	die "no free port found in 20000-39999"
}

# tcp_answers HOST PORT: something accepts connections there.
tcp_answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# save_url NAME URL records the URL of the server started for a service.
save_url() {
	mkdir -p "$STATE/$1"
	printf '%s\n' "$2" >"$STATE/$1/url"
}

# saved_url NAME prints the recorded URL of a service, or nothing.
saved_url() { cat "$STATE/$1/url" 2>/dev/null || true; }

var_of() { local v="VAR_${1//-/_}"; echo "${!v}"; }

# current_url NAME prints the URL the service answers at (its variable, else the
# server this script started), or fails.
current_url() {
	local var url
	var=$(var_of "$1")
	url=${!var:-}
	if [ -n "$url" ] && "$1_answers" "$url"; then
		echo "$url"
		return 0
	fi
	url=$(saved_url "$1")
	if [ -n "$url" ] && "$1_answers" "$url"; then
		echo "$url"
		return 0
	fi
	return 1
}

print_export() {
	printf "export %s='%s'\n" "$(var_of "$1")" "$2"
	if declare -F "$1_more_exports" >/dev/null; then "$1_more_exports"; fi
}

cmd_start() {
	local var url
	var=$(var_of "$1")
	if [ -n "${!var:-}" ] && ! "$1_answers" "${!var}"; then
		log "$1: $var is set but does not answer; starting a throwaway server instead"
	fi
	if url=$(current_url "$1"); then
		log "$1: answering at $url"
		print_export "$1" "$url"
		return 0
	fi
	"$1_stop_server" quiet
	"$1_start_server"
	print_export "$1" "$(saved_url "$1")"
}

cmd_env() {
	local url
	url=$(current_url "$1") || die "$1: not running; start it with: scripts/services.sh start $1"
	print_export "$1" "$url"
}

cmd_status() {
	local url
	if url=$(current_url "$1"); then
		log "$1: answering at $url"
	else
		log "$1: not running"
		return 1
	fi
}

cmd_stop() { "$1_stop_server"; }

# ---------- postgres ----------

VAR_postgres=FLOWGEN_TEST_POSTGRES

pg_bindir() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			echo "$d"
			return 0
		fi
	done
	if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
		dirname "$(command -v initdb)"
		return 0
	fi
	return 1
}

# pg_run runs a server program as the postgres user when root (PostgreSQL refuses root).
pg_run() {
	if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

postgres_answers() { # URL
	local bin hp host port
	if bin=$(pg_bindir) && [ -x "$bin/pg_isready" ]; then
		"$bin/pg_isready" -q -t 3 -d "$1"
		return
	fi
	if command -v pg_isready >/dev/null; then
		pg_isready -q -t 3 -d "$1"
		return
	fi
	# No client tools: check that host:port of the URL accepts connections.
	hp=${1#*://}
	hp=${hp##*@}
	hp=${hp%%/*}
	hp=${hp%%\?*}
	host=${hp%:*}
	port=5432
	[ "$hp" != "$host" ] && port=${hp##*:}
	tcp_answers "${host:-localhost}" "$port"
}

postgres_start_server() {
	local bin dir port try
	if ! bin=$(pg_bindir); then
		apt_install postgresql
		bin=$(pg_bindir) || die "postgres: installed postgresql, but found no initdb and pg_ctl under /usr/lib/postgresql/*/bin"
	fi
	if is_root && ! id postgres >/dev/null 2>&1; then
		die "postgres: as root, the server runs as the 'postgres' user, which does not exist (the Debian package creates it)"
	fi
	dir=$(mktemp -d "${TMPDIR:-/tmp}/flowgen-postgres.XXXXXX")
	chmod 755 "$dir"
	if is_root; then chown postgres: "$dir"; fi
	mkdir -p "$STATE/postgres"
	echo "$dir" >"$STATE/postgres/dir"

	log "postgres: initdb in $dir/data ($bin)"
	pg_run "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
		>"$dir/initdb.log" 2>&1 || {
		cat "$dir/initdb.log" >&2
		die "postgres: initdb failed"
	}
	for try in 1 2 3 4 5; do
		port=$(free_port)
		# A throwaway cluster for tests: nothing is durable, so fsync and friends are off.
		if pg_run "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
			"-p $port -k $dir -c listen_addresses=$HOST -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
			>"$dir/pg_ctl.log" 2>&1; then
			save_url postgres "postgres://postgres@$HOST:$port/postgres?sslmode=disable"
			log "postgres: started on $HOST:$port, data in $dir (stop it with: scripts/services.sh stop postgres)"
			return 0
		fi
		log "postgres: starting on port $port failed (attempt $try):"
		tail -n 5 "$dir/server.log" >&2 2>/dev/null || true
	done
	die "postgres: could not start a server; see $dir/server.log"
}

postgres_stop_server() { # [quiet]
	local dir bin
	if [ ! -f "$STATE/postgres/dir" ]; then
		[ "${1:-}" = quiet ] || log "postgres: no server started by this script"
		return 0
	fi
	dir=$(cat "$STATE/postgres/dir")
	if [ -f "$dir/data/postmaster.pid" ] && bin=$(pg_bindir); then
		pg_run "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
	fi
	case $dir in
	"${TMPDIR:-/tmp}"/flowgen-postgres.*) rm -rf "$dir" ;;
	esac
	rm -rf "$STATE/postgres"
	[ "${1:-}" = quiet ] || log "postgres: stopped the server and removed $dir"
}

# ---------- redis ----------

VAR_redis=FLOWGEN_TEST_REDIS

redis_answers() { # URL
	local hp host port
	hp=${1#*://}
	hp=${hp##*@}
	hp=${hp%%/*}
	hp=${hp%%\?*}
	host=${hp%:*}
	port=6379
	[ "$hp" != "$host" ] && port=${hp##*:}
	if command -v redis-cli >/dev/null; then
		[ "$(redis-cli -h "${host:-127.0.0.1}" -p "$port" ping 2>/dev/null)" = PONG ]
		return
	fi
	tcp_answers "${host:-127.0.0.1}" "$port"
}

redis_start_server() {
	local dir port try
	command -v redis-server >/dev/null || apt_install redis-server
	dir=$(mktemp -d "${TMPDIR:-/tmp}/flowgen-redis.XXXXXX")
	mkdir -p "$STATE/redis"
	echo "$dir" >"$STATE/redis/dir"
	for try in 1 2 3 4 5; do
		port=$(free_port)
		# A throwaway server for tests: in memory, nothing saved.
		if redis-server --bind "$HOST" --port "$port" --save '' --appendonly no --dir "$dir" \
			--daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null 2>&1; then
			for _ in $(seq 1 50); do
				if redis_answers "redis://$HOST:$port/0"; then
					save_url redis "redis://$HOST:$port/0"
					log "redis: started on $HOST:$port (stop it with: scripts/services.sh stop redis)"
					return 0
				fi
				sleep 0.1
			done
		fi
		log "redis: starting on port $port failed (attempt $try):"
		tail -n 5 "$dir/redis.log" >&2 2>/dev/null || true
	done
	die "redis: could not start a server; see $dir/redis.log"
}

redis_stop_server() { # [quiet]
	local dir
	if [ ! -f "$STATE/redis/dir" ]; then
		[ "${1:-}" = quiet ] || log "redis: no server started by this script"
		return 0
	fi
	dir=$(cat "$STATE/redis/dir")
	if [ -f "$dir/redis.pid" ]; then
		kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
	fi
	case $dir in
	"${TMPDIR:-/tmp}"/flowgen-redis.*) rm -rf "$dir" ;;
	esac
	rm -rf "$STATE/redis"
	[ "${1:-}" = quiet ] || log "redis: stopped the server and removed $dir"
}

# ---------- redis-cluster ----------
# Three masters (no replicas) on free loopback ports, as one Redis Cluster:
#   redis://127.0.0.1:P1?addr=127.0.0.1:P2&addr=127.0.0.1:P3&cluster=1

VAR_redis_cluster=FLOWGEN_TEST_REDIS_CLUSTER

redis-cluster_answers() { # URL
	local hp host port
	hp=${1#*://}
	hp=${hp%%/*}
	hp=${hp%%\?*}
	host=${hp%:*}
	port=${hp##*:}
	command -v redis-cli >/dev/null || return 1
	redis-cli -h "$host" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

redis-cluster_start_server() {
	local dir port ports=() addrs=() i url
	command -v redis-server >/dev/null || apt_install redis-server
	command -v redis-cli >/dev/null || apt_install redis-tools
	dir=$(mktemp -d "${TMPDIR:-/tmp}/flowgen-redis-cluster.XXXXXX")
	mkdir -p "$STATE/redis-cluster"
	echo "$dir" >"$STATE/redis-cluster/dir"
	for i in 1 2 3; do
		port=$(free_port)
		# free_port may hand out the same port twice before a server binds it.
		while [[ " ${ports[*]} " == *" $port "* ]]; do port=$(free_port); done
		mkdir -p "$dir/$port"
		redis-server --bind "$HOST" --port "$port" --save '' --appendonly no --dir "$dir/$port" \
			--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
			--daemonize yes --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" >/dev/null 2>&1 ||
			die "redis-cluster: could not start a node on port $port; see $dir/$port/redis.log"
		ports+=("$port")
		addrs+=("$HOST:$port")
	done
	for port in "${ports[@]}"; do
		for _ in $(seq 1 50); do
			[ "$(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null)" = PONG ] && break
			sleep 0.1
		done
	done
	redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 || {
		cat "$dir/create.log" >&2
		die "redis-cluster: redis-cli --cluster create failed"
	}
	url="redis://${addrs[0]}?addr=${addrs[1]}&addr=${addrs[2]}&cluster=1"
	for _ in $(seq 1 100); do
		if redis-cluster_answers "$url"; then
			save_url redis-cluster "$url"
			log "redis-cluster: started on ${addrs[*]} (stop it with: scripts/services.sh stop redis-cluster)"
			return 0
		fi
		sleep 0.1
	done
	die "redis-cluster: the cluster did not reach state ok; see $dir/*/redis.log"
}

redis-cluster_stop_server() { # [quiet]
	local dir pid
	if [ ! -f "$STATE/redis-cluster/dir" ]; then
		[ "${1:-}" = quiet ] || log "redis-cluster: no server started by this script"
		return 0
	fi
	dir=$(cat "$STATE/redis-cluster/dir")
	for pid in "$dir"/*/redis.pid; do
		[ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
	done
	case $dir in
	"${TMPDIR:-/tmp}"/flowgen-redis-cluster.*) rm -rf "$dir" ;;
	esac
	rm -rf "$STATE/redis-cluster"
	[ "${1:-}" = quiet ] || log "redis-cluster: stopped the servers and removed $dir"
}

# ---------- aws ----------
# dynalite (DynamoDB) and local-aws-sqs (SQS), Node programs from npm, installed once into
# $STATE/npm and reused. The URL names both endpoints:
#   aws://?region=us-east-1&endpoint_sqs=http://127.0.0.1:P1&endpoint_dynamodb=http://127.0.0.1:P2
# The servers accept any credentials; the tests set dummy ones when none are set.

VAR_aws=FLOWGEN_TEST_AWS
DYNALITE_VERSION=4.0.0
LOCAL_AWS_SQS_VERSION=2.0.2

# aws_param URL NAME prints the value of the URL's query parameter NAME.
aws_param() {
	local kv kvs
	IFS='&' read -ra kvs <<<"${1#*\?}"
	for kv in "${kvs[@]}"; do
		if [ "${kv%%=*}" = "$2" ]; then
			echo "${kv#*=}"
			return 0
		fi
	done
	return 1
}

# aws_http_answers URL: something accepts connections at the URL's host:port.
aws_http_answers() {
	local hp=${1#*://}
	hp=${hp%%/*}
	tcp_answers "${hp%:*}" "${hp##*:}"
}

aws_answers() { # URL
	local s d
	s=$(aws_param "$1" endpoint_sqs) || return 1
	d=$(aws_param "$1" endpoint_dynamodb) || return 1
	aws_http_answers "$s" && aws_http_answers "$d"
}

aws_npm_has() { # package version
	local f="$STATE/npm/node_modules/$1/package.json"
	[ -f "$f" ] && grep -q "\"version\": *\"$2\"" "$f"
}

aws_start_server() {
	local dir="$STATE/npm" sqs_port ddb_port p
	command -v node >/dev/null || apt_install nodejs npm
	mkdir -p "$dir" "$STATE/aws"
	if ! aws_npm_has dynalite "$DYNALITE_VERSION" || ! aws_npm_has local-aws-sqs "$LOCAL_AWS_SQS_VERSION"; then
		command -v npm >/dev/null || die "aws: needs npm to install dynalite and local-aws-sqs"
		[ -f "$dir/package.json" ] || echo '{"name":"flowgen-emulators","private":true}' >"$dir/package.json"
		log "aws: npm install dynalite@$DYNALITE_VERSION local-aws-sqs@$LOCAL_AWS_SQS_VERSION into $dir"
		(cd "$dir" && npm install --no-audit --no-fund --loglevel=error \
			"dynalite@$DYNALITE_VERSION" "local-aws-sqs@$LOCAL_AWS_SQS_VERSION" >"$STATE/aws/npm-install.log" 2>&1) || {
			cat "$STATE/aws/npm-install.log" >&2
			die "aws: npm install failed"
		}
	fi
	# local-aws-sqs 2.0.2 counts ChangeMessageVisibility as a receive (ApproximateReceiveCount
	# grows with every lease renewal; real SQS counts receives only): count only receives.
	sed -i 's/let n=Number(t.record.attributes.ApproximateReceiveCount)+1;/let n=Number(t.record.attributes.ApproximateReceiveCount)+(i?0:1);/' \
		"$dir/node_modules/local-aws-sqs/dist/index.js"
	# It also holds a long poll open until it has MaxNumberOfMessages messages or the wait
	# ends, while the leases of the messages it already took run out; real SQS returns as
	# soon as it has any: return after the first pass that found some.
	sed -i 's/if(r.length==e){clearInterval(c),clearTimeout(n),o();break}}},10)/if(r.length==e)break}r.length\&\&(clearInterval(c),clearTimeout(n),o())},10)/' \
		"$dir/node_modules/local-aws-sqs/dist/index.js"
	cat >"$dir/sqs-server.js" <<'JS'
// Starts local-aws-sqs (in-memory SQS, AWS JSON and Query protocols) on SQS_HOST:SQS_PORT.
const { createSqsServer } = require("local-aws-sqs");
const port = parseInt(process.env.SQS_PORT, 10), hostname = process.env.SQS_HOST;
createSqsServer({ port, hostname, emulateQueueCreationLifecycle: false })
  .then(() => console.log(`local-aws-sqs listening on http://${hostname}:${port}`))
  .catch((e) => { console.error(e); process.exit(1); });
JS
	ddb_port=$(free_port)
	(cd "$dir" && exec nohup node node_modules/dynalite/cli.js --host "$HOST" --port "$ddb_port" \
		--createTableMs 0 --deleteTableMs 0 --updateTableMs 0 >"$STATE/aws/dynalite.log" 2>&1 </dev/null) &
	echo $! >"$STATE/aws/dynalite.pid"
	sqs_port=$(free_port)
	[ "$sqs_port" != "$ddb_port" ] || sqs_port=$(free_port)
	(cd "$dir" && SQS_HOST=$HOST SQS_PORT=$sqs_port exec nohup node sqs-server.js \
		>"$STATE/aws/sqs.log" 2>&1 </dev/null) &
	echo $! >"$STATE/aws/sqs.pid"
	for _ in $(seq 1 100); do
		if tcp_answers "$HOST" "$ddb_port" && tcp_answers "$HOST" "$sqs_port"; then
			save_url aws "aws://?region=us-east-1&endpoint_sqs=http://$HOST:$sqs_port&endpoint_dynamodb=http://$HOST:$ddb_port"
			log "aws: dynalite on $HOST:$ddb_port, local-aws-sqs on $HOST:$sqs_port (stop them with: scripts/services.sh stop aws)"
			return 0
		fi
		for p in dynalite sqs; do
			kill -0 "$(cat "$STATE/aws/$p.pid")" 2>/dev/null || {
				tail -n 20 "$STATE/aws/$p.log" >&2
				die "aws: $p exited; see $STATE/aws/$p.log"
			}
		done
		sleep 0.1
	done
	die "aws: the servers did not answer in 10s; see $STATE/aws/*.log"
}

aws_stop_server() { # [quiet]
	local p stopped=0
	for p in dynalite sqs; do
		if [ -f "$STATE/aws/$p.pid" ] && kill "$(cat "$STATE/aws/$p.pid")" 2>/dev/null; then
			stopped=1
		fi
	done
	rm -f "$STATE/aws/dynalite.pid" "$STATE/aws/sqs.pid" "$STATE/aws/url"
	if [ "${1:-}" != quiet ]; then
		if [ $stopped = 1 ]; then log "aws: stopped dynalite and local-aws-sqs"; else log "aws: no server started by this script"; fi
	fi
	return 0
}

# ---------- azure ----------
# Azurite (Azure Storage Queues) and @vercel/cosmosdb-server (Cosmos DB), Node programs
# from npm installed into $STATE/npm, plus the redis service. Two Cosmos servers run: one
# over plain HTTP (--no-ssl, about 3x faster) for the suite, and one over HTTPS with its
# self-signed certificate for the test of the cosmos_insecure_tls=1 option, exported as
# FLOWGEN_TEST_AZURE_TLS (a Cosmos connection string). A second Azurite serves queues over
# HTTPS (a self-signed certificate made with openssl) with --oauth basic, so that bearer
# tokens are accepted (azcore sends none over plain http) and checked (claims, not
# signatures), for the test of queue_endpoint=: exported as FLOWGEN_TEST_AZURE_QUEUE_TLS
# (the queue service URL). The URL carries everything, the
# connection strings percent-encoded:
#   azure://?storage=<Azurite connection string>&cosmos=<Cosmos connection string>&redis=redis://…
# Both servers accept the well-known public development keys used here.

VAR_azure=FLOWGEN_TEST_AZURE
AZURITE_VERSION=3.37.0
COSMOSDB_SERVER_VERSION=1.0.1
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
COSMOS_KEY='C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=='

# urlenc STRING percent-encodes STRING for a URL query.
urlenc() {
	local s=$1 out='' c h i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case $c in
		[a-zA-Z0-9._~-]) out+=$c ;;
		*)
			printf -v h '%%%02X' "'$c"
			out+=$h
			;;
		esac
	done
	printf '%s' "$out"
}

# urldec STRING decodes percent-encoding.
urldec() {
	local s=${1//+/ }
	printf '%b' "${s//%/\\x}"
}

# hostport_of TEXT KEY prints host port of the http(s) URL that follows KEY= in TEXT.
hostport_of() {
	local v=${1#*"$2"=}
	[ "$v" != "$1" ] || return 1
	v=${v#*://}
	v=${v%%[/;&]*}
	echo "${v%:*} ${v##*:}"
}

azure_answers() { # URL
	local s c r hp
	s=$(aws_param "$1" storage) || return 1
	c=$(aws_param "$1" cosmos) || return 1
	r=$(aws_param "$1" redis) || return 1
	hp=$(hostport_of "$(urldec "$s")" QueueEndpoint) || return 1
	# shellcheck disable=SC2086
	tcp_answers $hp || return 1
	hp=$(hostport_of "$(urldec "$c")" AccountEndpoint) || return 1
	# shellcheck disable=SC2086
	tcp_answers $hp || return 1
	redis_answers "$(urldec "$r")"
}

azure_more_exports() {
	local p
	p=$(cat "$STATE/azure/cosmos-tls.port" 2>/dev/null) || return 0
	printf "export FLOWGEN_TEST_AZURE_TLS='%s'\n" "AccountEndpoint=https://$HOST:$p/;AccountKey=$COSMOS_KEY;"
	p=$(cat "$STATE/azure/azurite-tls.port" 2>/dev/null) || return 0
	printf "export FLOWGEN_TEST_AZURE_QUEUE_TLS='%s'\n" "https://$HOST:$p/devstoreaccount1/"
}

azure_start_server() {
	local dir="$STATE/npm" redis_url q_port qt_port c_port t_port f p storage cosmos
	command -v node >/dev/null || apt_install nodejs npm
	mkdir -p "$dir" "$STATE/azure"
	if ! redis_url=$(current_url redis); then
		redis_stop_server quiet
		redis_start_server
		redis_url=$(saved_url redis)
	fi
	local pkgs=()
	aws_npm_has azurite "$AZURITE_VERSION" || pkgs+=("azurite@$AZURITE_VERSION")
	aws_npm_has @vercel/cosmosdb-server "$COSMOSDB_SERVER_VERSION" || pkgs+=("@vercel/cosmosdb-server@$COSMOSDB_SERVER_VERSION")
	if [ ${#pkgs[@]} -gt 0 ]; then
		command -v npm >/dev/null || die "azure: needs npm to install ${pkgs[*]}"
		[ -f "$dir/package.json" ] || echo '{"name":"flowgen-emulators","private":true}' >"$dir/package.json"
		log "azure: npm install ${pkgs[*]} into $dir (about a minute the first time)"
		(cd "$dir" && npm install --no-audit --no-fund --loglevel=error "${pkgs[@]}" \
			>"$STATE/azure/npm-install.log" 2>&1) || {
			cat "$STATE/azure/npm-install.log" >&2
			die "azure: npm install failed"
		}
	fi
	# cosmosdb-server 1.0.1 answers a point read of a missing item with 500 (a TypeError)
	# instead of 404: guard the dereference (idempotent).
	f="$dir/node_modules/@vercel/cosmosdb-server/lib/handler/read-document.js"
	sed -i 's/if (data\[path\] !== clientKeys\[i\]) {/if (!data || data[path] !== clientKeys[i]) {/' "$f"
	# Azurite 3.37.0's queue GC runs every minute and deletes each unreferenced extent (one
	# per message written) from an indexed in-memory collection one at a time: quadratic,
	# it blocks the server for minutes once the tests have written some ten thousand
	# messages. These servers are throwaway: run it once a day (idempotent).
	sed -i 's/^exports.DEFAULT_GC_INTERVAL_MS = 60 \* 1000;/exports.DEFAULT_GC_INTERVAL_MS = 24 * 60 * 60 * 1000;/' \
		"$dir/node_modules/azurite/dist/src/queue/utils/constants.js"
	q_port=$(free_port)
	(cd "$STATE/azure" && exec nohup node "$dir/node_modules/azurite/dist/src/queue/main.js" \
		--queueHost "$HOST" --queuePort "$q_port" --inMemoryPersistence --disableTelemetry \
		--skipApiVersionCheck --silent >"$STATE/azure/azurite.log" 2>&1 </dev/null) &
	echo $! >"$STATE/azure/azurite.pid"
	if [ ! -f "$STATE/azure/azurite-tls.key" ]; then
		command -v openssl >/dev/null || apt_install openssl
		openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$HOST" \
			-addext "subjectAltName=IP:$HOST,DNS:localhost" \
			-keyout "$STATE/azure/azurite-tls.key" -out "$STATE/azure/azurite-tls.crt" \
			>"$STATE/azure/openssl.log" 2>&1 || die "azure: openssl: see $STATE/azure/openssl.log"
	fi
	qt_port=$(free_port)
	(cd "$STATE/azure" && exec nohup node "$dir/node_modules/azurite/dist/src/queue/main.js" \
		--queueHost "$HOST" --queuePort "$qt_port" --inMemoryPersistence --disableTelemetry \
		--skipApiVersionCheck --silent --oauth basic \
		--cert "$STATE/azure/azurite-tls.crt" --key "$STATE/azure/azurite-tls.key" \
		>"$STATE/azure/azurite-tls.log" 2>&1 </dev/null) &
	echo $! >"$STATE/azure/azurite-tls.pid"
	c_port=$(free_port)
	(cd "$dir" && exec nohup node node_modules/@vercel/cosmosdb-server/lib/cli.js \
		--host "$HOST" --port "$c_port" --no-ssl >"$STATE/azure/cosmos.log" 2>&1 </dev/null) &
	echo $! >"$STATE/azure/cosmos.pid"
	t_port=$(free_port)
	(cd "$dir" && exec nohup node node_modules/@vercel/cosmosdb-server/lib/cli.js \
		--host "$HOST" --port "$t_port" >"$STATE/azure/cosmos-tls.log" 2>&1 </dev/null) &
	echo $! >"$STATE/azure/cosmos-tls.pid"
	for _ in $(seq 1 150); do
		if tcp_answers "$HOST" "$q_port" && tcp_answers "$HOST" "$qt_port" && tcp_answers "$HOST" "$c_port" &&
			tcp_answers "$HOST" "$t_port"; then
			storage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$AZURITE_KEY;QueueEndpoint=http://$HOST:$q_port/devstoreaccount1;"
			cosmos="AccountEndpoint=http://$HOST:$c_port/;AccountKey=$COSMOS_KEY;"
			echo "$t_port" >"$STATE/azure/cosmos-tls.port"
			echo "$qt_port" >"$STATE/azure/azurite-tls.port"
			save_url azure "azure://?storage=$(urlenc "$storage")&cosmos=$(urlenc "$cosmos")&redis=$(urlenc "$redis_url")"
			log "azure: Azurite on $HOST:$q_port (and https, oauth, on $HOST:$qt_port), cosmosdb-server on $HOST:$c_port (http) and $HOST:$t_port (https), redis at $redis_url (stop them with: scripts/services.sh stop azure)"
			return 0
		fi
		for p in azurite azurite-tls cosmos cosmos-tls; do
			kill -0 "$(cat "$STATE/azure/$p.pid")" 2>/dev/null || {
				tail -n 20 "$STATE/azure/$p.log" >&2
				die "azure: $p exited; see $STATE/azure/$p.log"
			}
		done
		sleep 0.1
	done
	die "azure: the servers did not answer in 15s; see $STATE/azure/*.log"
}

azure_stop_server() { # [quiet]
	local p pid stopped=0
	for p in azurite azurite-tls cosmos cosmos-tls; do
		[ -f "$STATE/azure/$p.pid" ] || continue
		pid=$(cat "$STATE/azure/$p.pid")
		if kill "$pid" 2>/dev/null; then
			stopped=1
			# A server busy in a loop may not heed SIGTERM.
			for _ in $(seq 1 30); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			kill -9 "$pid" 2>/dev/null || true
		fi
		rm -f "$STATE/azure/$p.pid"
	done
	rm -f "$STATE/azure/url" "$STATE/azure/cosmos-tls.port" "$STATE/azure/azurite-tls.port"
	if [ "${1:-}" != quiet ]; then
		if [ $stopped = 1 ]; then log "azure: stopped Azurite and cosmosdb-server (not redis)"; else log "azure: no server started by this script"; fi
	fi
	return 0
}

# ---------- main ----------

usage() {
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
	exit 2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
start | stop | status | env) ;;
*) usage ;;
esac
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${SERVICES[@]}")
for n in "${names[@]}"; do
	[[ " ${SERVICES[*]} " == *" $n "* ]] || die "unknown service '$n' (known: ${SERVICES[*]})"
done
rc=0
for n in "${names[@]}"; do
	"cmd_$cmd" "$n" || rc=1
done
exit $rc
