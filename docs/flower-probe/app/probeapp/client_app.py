"""ClientApp of the probe: answers `query.embed` messages."""

import os
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query("embed")
def embed(msg: Message, context: Context) -> Message:
    t0 = time.time()
    cfg = msg.content["cfg"]
    dim = int(cfg["dim"])
    sleep_s = float(cfg.get("sleep", 0.0))
    # node_config: set by --node-config (deployment) or by the simulation engine
    pid = int(context.node_config["partition-id"])
    nparts = int(context.node_config.get("num-partitions", -1))

    # counter persisted in context.state between messages to the same node
    if "probe" in context.state:
        counter = int(context.state["probe"]["counter"]) + 1
    else:
        counter = 1
    context.state["probe"] = MetricRecord({"counter": counter})

    if sleep_s > 0:
        time.sleep(sleep_s)
    if int(cfg.get("fail-partition", -1)) == pid:
        raise RuntimeError(f"probe: deliberate ClientApp failure on partition {pid}")

    emb = np.full((dim,), float(pid), dtype=np.float32) + np.arange(dim, dtype=np.float32)
    content = RecordDict(
        {
            "emb": ArrayRecord({"emb": Array(emb)}),  # dict values must be flwr Array (or pass a list of ndarrays)
            "info": ConfigRecord(
                {
                    "partition-id": pid,
                    "num-partitions": nparts,
                    "counter": counter,
                    "pid": os.getpid(),
                    "node-id": str(context.node_id),
                    "node-config-keys": ",".join(sorted(context.node_config.keys())),
                }
            ),
            "metrics": MetricRecord({"handler-s": time.time() - t0}),
        }
    )
    return Message(content=content, reply_to=msg)
