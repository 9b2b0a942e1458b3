#!/bin/bash
# Wait until every container of a compose project runs and passes its health check.
#   compose/wait-healthy.sh [PROJECT] [TIMEOUT_S]      (defaults: vnet, 300)
# Prints the seconds it took; on timeout, the containers that are not healthy with
# their last health output and log lines, and exits 1.
set -uo pipefail
project=${1:-vnet}
timeout=${2:-300}
start=$(date +%s)
while :; do
    ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project" \
                       --filter "label=com.docker.compose.oneoff=False")
    if [ -z "$ids" ]; then echo "no containers in project $project" >&2; exit 1; fi
    waiting=$(docker inspect --format \
        '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' \
        $ids | awk '$2 != "running" || ($3 != "healthy" && $3 != "none")')
    now=$(date +%s)
    if [ -z "$waiting" ]; then
        echo "$project: $(echo "$ids" | wc -w) containers healthy after $((now - start)) s"
        exit 0
    fi
    if [ $((now - start)) -ge "$timeout" ]; then
        echo "$project: not healthy after $timeout s:" >&2
        echo "$waiting" | while read -r name _; do
            echo "--- ${name#/}: last health check" >&2
            docker inspect --format '{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}' \
                "${name#/}" | tail -5 >&2
            echo "--- ${name#/}: log" >&2
            docker logs --tail 20 "${name#/}" 2>&1 | sed 's/^/    /' >&2
        done
        exit 1
    fi
    sleep 2
done
