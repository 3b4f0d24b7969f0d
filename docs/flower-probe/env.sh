# source this before any flwr command of the probe
export FLWR_HOME=/tmp/flwr-probe/flwr_home          # isolates config.toml, apps/, local-superlink/ state+log
export PATH=/work/main/.venv/bin:$PATH             # flwr spawns flower-superlink / flower-superexec / flwr-simulation / flwr-serverapp / flwr-clientapp BY NAME from PATH
export FLWR_TELEMETRY_ENABLED=0                    # no telemetry POSTs
export FLWR_DISABLE_UPDATE_CHECK=1                 # no PyPI update check
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1   # SuperLink default is to `uv sync` app deps -> disable
export UV_OFFLINE=1                                # belt and braces: uv can never hit the network
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=39191    # managed local SuperLink (default 39091) - avoid clashing with other users
export FLWR_LOCAL_CONTROL_API_PORT=39193           # (default 39093)
export RAY_TMPDIR=/tmp/flwr-probe/ray_tmp                # Ray session dirs (default /tmp/ray)
