#!/usr/bin/env bash
# End-to-end: start runtime, run probe app, wait, check status + JSON, tear down.
#   ./run_e2e.sh sim      -> user-managed simulation SuperLink (Ray backend), 3 virtual SuperNodes
#   ./run_e2e.sh deploy   -> SuperLink + 3 SuperNodes (deployment runtime, subprocess isolation)
set -uo pipefail
MODE=${1:-sim}
cd /tmp/flwr-probe
source ./env.sh
RES=/tmp/flwr-probe/result_e2e_$MODE.json
rm -f "$RES"
if [ "$MODE" = sim ]; then
  trap './sim_down.sh >/dev/null' EXIT
  ./sim_up.sh >/dev/null
  CONN=sim
  EXTRA=(--federation-config "num-supernodes=3 client-resources-num-cpus=1")
else
  trap './deploy_down.sh >/dev/null' EXIT
  ./deploy_up.sh >/dev/null
  CONN=deploy
  EXTRA=()
fi
T0=$(date +%s.%N)
# 1) submit (returns immediately); JSON gives the run id
RID=$(flwr run ./app $CONN "${EXTRA[@]}" --format json \
        --run-config "result-path='$RES' rounds=3 fast-poll=0.05" \
      | python -c 'import json,sys; print(json.load(sys.stdin)["run-id"])') || { echo "submit failed"; exit 1; }
echo "run id $RID"
# 2) block until the run finishes (streams ServerApp logs; exit code is 0 even if the run failed)
flwr log "$RID" $CONN --stream > /tmp/flwr-probe/e2e_$MODE.log 2>&1
# 3) authoritative status
STATUS=$(flwr ls $CONN --run-id "$RID" --format json | python -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; print(r["status"], "|", r["status-details"])')
echo "status: $STATUS   (wall $(echo "$(date +%s.%N)-$T0" | bc) s)"
python ./show.py "$RES" | grep -E "^ok|round"
[[ "$STATUS" == finished:completed* ]]
