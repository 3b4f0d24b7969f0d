#!/usr/bin/env bash
# Kill every process group started by deploy_up.sh (SIGTERM, then SIGKILL).
D=/tmp/flwr-probe/deploy
[ -f $D/pids.txt ] || exit 0
while read name pid; do kill -TERM -- -$pid 2>/dev/null && echo "TERM $name ($pid)"; done < $D/pids.txt
sleep 3
while read name pid; do kill -KILL -- -$pid 2>/dev/null && echo "KILL $name ($pid)"; done < $D/pids.txt
true
