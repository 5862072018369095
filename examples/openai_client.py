#!/usr/bin/env python3
"""Call a ``qembed-gguf serve`` server with the official ``openai`` Python client.

Against a running server::

    qembed-gguf serve Qwen3-Embedding-0.6B-Q8_0.gguf --api-key sk-local &     # in another shell
    python examples/openai_client.py --base-url http://127.0.0.1:8000/v1 --api-key sk-local \\
        --model Qwen3-Embedding-0.6B-Q8_0

Self-contained (starts a server on a free loopback port with the bundled model, then stops it)::

    python examples/openai_client.py --serve mini

It embeds documents (float and base64 encodings), a query with the model's instruction through
the ``input_type`` extension, the same documents at a Matryoshka ``dimensions``, and prints a
query × document similarity table. Needs ``pip install "qembed-gguf[server,examples]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

log = logging.getLogger("openai_client")

DOCUMENTS = [
    "GGUF is the file format llama.cpp loads models from.",
    "La tour Eiffel se trouve à Paris.",
    "Der Rhein fließt durch Deutschland und die Schweiz.",
    "向量数据库根据相似度检索嵌入向量。",
]
QUERIES = ["Which file format does llama.cpp use?", "Where is the Eiffel Tower?"]


@contextlib.contextmanager
def local_server(model: str, api_key: str | None):
    """``qembed-gguf serve MODEL`` on a free loopback port; yields (base_url, served model id)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = "local-embedding"
    argv = [sys.executable, "-m", "qembed_gguf", "serve", model, "--port", str(port), "--model-name", name]
    env = dict(os.environ)
    if api_key:
        env["QEMBED_API_KEY"] = api_key
    log_file = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    try:
        deadline = time.monotonic() + 300  # a checkpoint is converted on first use
        while True:
            if proc.poll() is not None:
                log_file.seek(0)
                raise RuntimeError(f"the server exited with {proc.returncode}: {log_file.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start in time") from None
                time.sleep(0.2)
        log.info("server up on port %d (pid %d)", port, proc.pid)
        yield f"http://127.0.0.1:{port}/v1", name
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


def run(base_url: str, model: str, api_key: str, dim: int | None) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
    served = [m.id for m in client.models.list().data]
    # documents: raw text. The client sends encoding_format=base64 unless told otherwise and decodes it;
    # ask for floats once to show both encodings give the same vectors.
    docs = client.embeddings.create(model=model, input=DOCUMENTS)
    docs_float = client.embeddings.create(model=model, input=DOCUMENTS, encoding_format="float")
    d = np.array([x.embedding for x in docs.data], dtype=np.float32)
    same = bool(np.array_equal(d, np.array([x.embedding for x in docs_float.data], dtype=np.float32)))
    # queries: the model's instruction is applied by the server (extension field input_type)
    q_resp = client.embeddings.create(model=model, input=QUERIES, extra_body={"input_type": "query"})
    q = np.array([x.embedding for x in q_resp.data], dtype=np.float32)
    small = None
    if dim:
        small = client.embeddings.create(model=model, input=DOCUMENTS, dimensions=dim)
        small = np.array([x.embedding for x in small.data], dtype=np.float32)
    return {"served": served, "docs": d, "queries": q, "float_equals_base64": same,
            "prompt_tokens": docs.usage.prompt_tokens, "small": small}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    where.add_argument("--serve", metavar="MODEL", help="start a local server for MODEL (e.g. mini) and use it")
    ap.add_argument("--model", default=None, help="model id the server serves (default: the first of /v1/models)")
    ap.add_argument("--api-key", default=os.environ.get("QEMBED_API_KEY", "unused"),
                    help="the server's --api-key (any string if it has none)")
    ap.add_argument("--dim", type=int, default=128, help="Matryoshka dimensions to request (0: skip)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    try:
        with contextlib.ExitStack() as stack:
            base_url, model = args.base_url, args.model
            if args.serve:
                base_url, model = stack.enter_context(local_server(args.serve, args.api_key))
            if model is None:
                from openai import OpenAI
                model = OpenAI(base_url=base_url, api_key=args.api_key).models.list().data[0].id
            result = run(base_url, model, args.api_key, args.dim or None)
    except Exception as e:  # noqa: BLE001 - an example: one line, not a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    docs, queries = result["docs"], result["queries"]
    print(f"server models: {', '.join(result['served'])}; using {model}")
    print(f"documents {docs.shape}, queries {queries.shape}, {result['prompt_tokens']} document tokens; "
          f"float == base64: {result['float_equals_base64']}")
    if result["small"] is not None:
        print(f"dimensions={args.dim}: {result['small'].shape}, norms "
              f"{np.round(np.linalg.norm(result['small'], axis=1), 4).tolist()}")
    print("cosine (query x document):")
    for qi, row in enumerate(queries @ docs.T):
        print(f"  q{qi} " + " ".join(f"{v:+.3f}" for v in row) + f"  best: doc{int(row.argmax())}  {QUERIES[qi]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
