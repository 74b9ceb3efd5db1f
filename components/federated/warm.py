"""A warm ClientApp worker for a SuperNode: every message of every round runs in this one long-lived process, so what
the ClientApp loads once (the site's records, the base model: :data:`components.federated.app._TASKS`, the tasks'
own caches) stays loaded from round to round (issue 22, item 5).

    medtune-supernode --warm --superlink host:9092 --port 9094 --node-config 'site="hospital-a" data="/srv/a.jsonl"'
    python -m components.federated.launch supernode --warm ...          # the same

Flower 1.42's SuperNode (``--isolation subprocess``, its default) has its SuperExec start a fresh ``flwr-clientapp``
process for every message, and the ClientApp loses everything it loaded when the message is answered: on the VLM
task about 45 s of a 50 s round reloaded the model. With ``--warm`` the launcher starts the SuperNode with
``--isolation process`` (it then starts no SuperExec of its own and serves its Runtime API for an external one)
and this worker as that external executor: it acquires the node's ClientApp tasks from the Runtime API like
Flower's SuperExec and runs each one the way ``flwr-clientapp`` does (pull the message, context and FAB, load the
ClientApp named by the FAB, call it, push the reply and the task's status), but in this process and without
ending it. One task at a time, as a SuperNode receives them; a ClientApp that raises becomes an error reply, as in
Flower. The worker exits with the SuperNode (it watches its parent's pid).

Limits: the Runtime API is reached in the clear on the SuperNode's own host (``--port`` on 127.0.0.1, as Flower's
own SuperExec does with ``--isolation subprocess``); runtime dependency installation is not supported (medtune's
FAB carries configuration only).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("medtune.federated")

POLL_SECONDS = 0.2


def run_task(address: str, token: str) -> str:
    """One ClientApp task in this process (Flower's ``run_clientapp`` without its process exit); its status."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],  # fmt: skip
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        install_from_fab(fab.content, skip_prompt=True)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        app = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # as flwr-clientapp: the failure becomes the node's error reply
        details = f"{type(ex)}:<'{ex}'>"
        log.error("ClientApp raised an exception: %s", details, exc_info=ex)
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as ex:
            log.error("could not push the reply: %s", ex)
            status = SubStatus.FAILED
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    return str(status)


def serve(address: str, parent_pid: int | None = None) -> None:
    """Acquire this SuperNode's ClientApp tasks from its Runtime API at ``address`` and run them, forever."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    log.info("warm ClientApp worker (pid %d) serving the SuperNode's Runtime API at %s", os.getpid(), address)
    while True:
        res = client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)], agentapp_fab_hashes=[])
        )
        if res.HasField("task") and res.token:
            started = time.perf_counter()
            status = run_task(address, res.token)
            log.info("task %d: %s in %.1f s (warm)", res.task.task_id, status, time.perf_counter() - started)
        time.sleep(POLL_SECONDS)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="medtune's warm ClientApp worker for a SuperNode (--isolation process)")
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) ends")
    ns = p.parse_args(argv)
    # medtune's own lines at INFO (task loaded / re-used, each task's time); the libraries' (httpx logs every
    # Runtime API poll at INFO) at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("medtune").setLevel(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):  # the SuperNode ended (the parent monitor raises SIGINT)
        serve(ns.runtime_api_address, ns.parent_pid)


if __name__ == "__main__":
    main()
