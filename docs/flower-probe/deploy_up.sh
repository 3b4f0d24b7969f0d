#!/usr/bin/env bash
# Start 1 SuperLink + N SuperNodes (deployment runtime) on 127.0.0.1, each in its own
# process group (setsid). PIDs are written to deploy/pids.txt; logs to deploy/*.log.
set -euo pipefail
source /tmp/flwr-probe/env.sh
N=${N:-3}
# SuperExec task-poll interval (default 1.0 s, min 0.01); inherited by the superexec
# children of SuperLink and SuperNodes
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}
LINK_PORT=${LINK_PORT:-39291}          # SuperLink HTTP: Fleet + Control + ServerAppIo(Runtime) API, all on ONE port
NODE_PORT0=${NODE_PORT0:-39301}        # SuperNode i's ClientAppIo (Runtime) HTTP API = NODE_PORT0+i
D=/tmp/flwr-probe/deploy
mkdir -p $D
: > $D/pids.txt
setsid flower-superlink --insecure --isolation subprocess --disable-runtime-dependency-installation \
    --host 127.0.0.1 --port $LINK_PORT > $D/superlink.log 2>&1 < /dev/null &
echo "superlink $!" >> $D/pids.txt
# wait for health
for i in $(seq 1 100); do
  if curl -sf http://127.0.0.1:$LINK_PORT/health > /dev/null; then break; fi; sleep 0.2
done
curl -sf http://127.0.0.1:$LINK_PORT/health && echo " <- superlink healthy"
# the SuperLink's flower-superexec is started DETACHED (own session/pgid): record it too
# (it also exits by itself when its --parent-pid dies)
sleep 0.5
for c in $(pgrep -P $(awk '/^superlink /{print $2}' $D/pids.txt)); do echo "superlink-superexec $c" >> $D/pids.txt; done
for i in $(seq 0 $((N-1))); do
  FLWR_HOME=$D/node$i setsid flower-supernode --insecure --superlink 127.0.0.1:$LINK_PORT \
      --node-config "partition-id=$i num-partitions=$N" \
      --isolation subprocess --host 127.0.0.1 --port $((NODE_PORT0+i)) \
      > $D/supernode$i.log 2>&1 < /dev/null &
  echo "supernode$i $!" >> $D/pids.txt
done
cat $D/pids.txt
