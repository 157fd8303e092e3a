#!/usr/bin/env bash
# Development tasks, the same for people and CI:
#   scripts/dev.sh demo      generate the examples and run the order example (no server needed)
#   scripts/dev.sh generate  regenerate examples/generated and the blueprint JSON Schema
#   scripts/dev.sh verify    fail when generated files differ from what flowgen produces today
#   scripts/dev.sh lint      gofmt, go vet and staticcheck
#   scripts/dev.sh test      everything: verify, lint, and go test -race ./...
#   scripts/dev.sh bench     flowgen bench on mem://
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

need_go() {
	command -v go >/dev/null || { echo "Go is required (https://go.dev/dl/); it was not found on PATH" >&2; exit 1; }
}

generate() {
	log "go generate ./examples/..."
	go generate ./examples/...
	log "flowgen schema -generate schema > schema/blueprint.schema.json"
	go run -tags flowgen_nobench ./cmd/flowgen schema -generate schema > schema/blueprint.schema.json.new
	mv schema/blueprint.schema.json.new schema/blueprint.schema.json
}

verify() {
	generate
	log "checking that generated files are current"
	if [ -n "$(git status --porcelain -- examples/generated schema)" ]; then
		git status --porcelain -- examples/generated schema >&2
		git --no-pager diff --stat -- examples/generated schema >&2 || true
		echo "generated files are out of date: run 'scripts/dev.sh generate' and commit the result" >&2
		exit 1
	fi
}

lint() {
	log "gofmt"
	unformatted=$(gofmt -l $(git ls-files '*.go'))
	if [ -n "$unformatted" ]; then
		echo "gofmt would change:" >&2
		echo "$unformatted" >&2
		exit 1
	fi
	log "go vet ./..."
	go vet ./...
	log "staticcheck ./..."
	go run honnef.co/go/tools/cmd/staticcheck ./...
}

case "${1:-}" in
demo)
	need_go
	generate
	log "go run ./examples/order"
	go run ./examples/order
	;;
generate) need_go; generate ;;
verify) need_go; verify ;;
lint) need_go; lint ;;
test)
	need_go
	verify
	lint
	log "starting the servers the backend tests need (scripts/services.sh)"
	eval "$(bash scripts/services.sh start postgres redis redis-cluster aws azure)"
	trap 'bash scripts/services.sh stop >&2 || true' EXIT
	log "go test -race ./..."
	go test -race -count=1 ./...
	;;
bench)
	need_go
	go run ./cmd/flowgen bench "${@:2}"
	;;
*)
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
