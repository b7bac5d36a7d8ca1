"""Where candidates run: a local spawn process pool, or Ray (started on loopback only)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator, Mapping

from helix_framework.errors import SweepError
from helix_framework.sweep.spec import WORKER_ENV
from helix_framework.sweep.worker import run_candidate

log = logging.getLogger(__name__)


# -- executors -----------------------------------------------------------------


def run_local(tasks: list[dict[str, Any]], jobs: int, on_result: Callable[[int, dict[str, Any]], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_candidate, task): i for i, task in enumerate(tasks)}
        try:
            for fut in as_completed(futures):
                on_result(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


#: environment of a Ray instance this tool starts: everything on loopback, no
#: usage statistics. Ray replaces a loopback node address with the routable one
#: (found by a UDP "connect" to 8.8.8.8) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
#: is 0, and its head process asks the cloud metadata endpoints
#: (169.254.169.254, metadata.google.internal) for the provider name even with
#: usage statistics off; a proxy on a closed loopback port turns those requests
#: into an immediate "connection refused", while loopback itself bypasses it.
RAY_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{k: "localhost,127.0.0.1,::1" for k in ("no_proxy", "NO_PROXY")},
}


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while the block runs (child processes
    started meanwhile keep them), then as it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_ray(tasks: list[dict[str, Any]], jobs: int, address: str | None,
             on_result: Callable[[int, dict[str, Any]], None]) -> None:
    """Run ``tasks`` as Ray tasks: on the cluster at ``address``, else on a
    Ray instance started here, bound to 127.0.0.1, dashboard and usage
    statistics off (`RAY_LOCAL_ENV`)."""
    with _environ({k: v for k, v in RAY_LOCAL_ENV.items() if not address or k.startswith("RAY_USAGE")}):
        try:
            import ray
        except ImportError:
            raise SweepError("executor ray needs Ray: pip install 'helix-framework[ray]'") from None
        env = {"RAY_USAGE_STATS_ENABLED": "0", **{k: os.environ[k] for k in WORKER_ENV if k in os.environ}}
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "runtime_env": {"env_vars": env}}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=jobs, include_dashboard=False, _node_ip_address="127.0.0.1",
                         object_store_memory=200 * 1024**2, **kwargs)
            started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_candidate)
        pending = {remote.remote(task): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_result(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()
