#!/usr/bin/env bash
# Servers the backend tests need, started on demand, on 127.0.0.1 only:
#   scripts/services.sh start [SERVICE...]   make each service answer; print its export lines
#   scripts/services.sh env [SERVICE...]     print the export lines of services that answer
#   scripts/services.sh status [SERVICE...]  say which services answer
#   scripts/services.sh stop [SERVICE...]    stop the servers this script started
# Services: postgres (FLOWGEN_TEST_POSTGRES). Without a name, every service. Use it as
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

SERVICES=(postgres)
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

var_of() { local v="VAR_$1"; echo "${!v}"; }

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

print_export() { printf "export %s='%s'\n" "$(var_of "$1")" "$2"; }

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
