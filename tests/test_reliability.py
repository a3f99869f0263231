"""Reliability: interrupts and resume, divergence, and bad input never producing a traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from effrecipes.cli import main
from tests.conftest import REPO, tiny_recipe, write_recipe

SLOW_RECIPE = {"budget.flops": 6e9, "data.kwargs.num_train": 640, "eval.every_epochs": 100}


def _metrics(root: Path, name: str = "tiny") -> dict[str, Any]:
    return json.loads((root / name / "metrics.json").read_text())


def _start(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EFFRECIPES_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "effrecipes.cli", str(path), "--quiet", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_then_resume_matches_uninterrupted_flops(tmp_path: Path) -> None:
    # reference: the same recipe, uninterrupted
    ref = tiny_recipe(tmp_path, **SLOW_RECIPE, **{"output.root": str(tmp_path / "ref")})
    assert main([str(write_recipe(tmp_path, ref, "ref.yaml")), "--quiet"]) == 0
    expected = _metrics(tmp_path / "ref")
    assert expected["stop_reason"] == "flops"

    recipe = tiny_recipe(tmp_path, **SLOW_RECIPE)
    path = write_recipe(tmp_path, recipe)
    proc = _start(path)
    runs = tmp_path / "runs"
    deadline = time.time() + 120
    # wait until training is under way (the temporary run directory has its history file)
    while time.time() < deadline and not list(runs.glob(".tiny.tmp-*/recipe.yaml")):
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    interrupted = _metrics(runs)
    assert interrupted["stop_reason"] == "interrupted", err
    assert 0 < interrupted["flops_used"] < expected["flops_used"]
    assert (runs / "tiny" / "resume.pt").exists()
    assert not list(runs.glob(".tiny.tmp-*"))

    assert main([str(path), "--quiet", "--resume"]) == 0
    resumed = _metrics(runs)
    assert resumed["stop_reason"] == "flops"
    assert resumed["flops_used"] == expected["flops_used"] <= recipe["budget"]["flops"]
    assert resumed["batches"] == expected["batches"]
    assert not (runs / "tiny" / "resume.pt").exists()


def test_resume_refuses_finished_or_changed_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7}))
    assert main([str(path), "--quiet", "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err
    assert main([str(path), "--quiet"]) == 0
    assert main([str(path), "--quiet", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_divergence_stops_and_keeps_last_good_weights(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, **{"optimizer": {"name": "sgd", "lr": 1e12, "momentum": 0.0,
                                                    "weight_decay": 0.0}, "budget.flops": 2e8})
    assert main([str(write_recipe(tmp_path, recipe)), "--quiet"]) == 0
    m = _metrics(tmp_path / "runs")
    assert m["stop_reason"] == "diverged"
    assert m["batches"] < m["planned_batches"]
    assert m["flops_used"] <= 2e8
    assert any("non-finite" in w for w in m["warnings"])
    assert (tmp_path / "runs" / "tiny" / "checkpoint.pt").exists()


# ---------------------------------------------------------------- property-based bad input

SECTIONS = ["name", "seed", "data", "model", "optimizer", "scheduler", "algorithms", "budget",
            "eval", "loggers", "output", "strict", "unknown"]
# text YAML can hold (no lone surrogates), so every generated example is written and tried
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)

def _schema_keys() -> list[str]:
    """Every field name of the recipe schema, so junk mappings often have real keys and reach the
    checks behind the schema (plan, output directory), not only the unknown-key error."""
    from pydantic import BaseModel

    from effrecipes.recipe import Recipe
    names: set[str] = set()
    todo: list[Any] = [Recipe]
    while todo:
        model = todo.pop()
        for name, field in model.model_fields.items():
            names.add(name)
            for t in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(t, type) and issubclass(t, BaseModel) and t not in todo:
                    todo.append(t)
    return sorted(names - {"root"})  # a junk absolute output.root would write outside tmp


key = st.sampled_from(_schema_keys()) | text
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(key, children, max_size=3),
    max_leaves=8)


@settings(max_examples=int(os.environ.get("EFFRECIPES_HYPOTHESIS_EXAMPLES", 40)), deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(section=st.sampled_from(SECTIONS), value=junk)
def test_any_section_value_trains_or_is_one_line_exit_2_with_nothing_written(
        tmp_path_factory: pytest.TempPathFactory, section: str, value: Any) -> None:
    """A real run (not --dry-run) of a recipe with one section replaced by junk: either it trains
    and leaves exactly one finished run directory, or it is a one-line error (exit 2) and nothing
    at all is written - not the run directory, not its temporary, not a relative output root
    (the working directory is the example's own directory, so those would be seen)."""
    tmp = tmp_path_factory.mktemp("h")
    recipe = tiny_recipe(tmp, **{"budget.flops": 5e7, "eval.latency_images": 0})
    recipe[section] = value
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        code, err = subprocess_free_cli(path, "--quiet")
    finally:
        os.chdir(cwd)
    written = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p != path)
    event(f"exit code {code}")  # --hypothesis-show-statistics: how many trained, how many refused
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert written == [], (err, written)
    else:
        finished = [p for p in written if p.endswith("metrics.json")]
        assert len(finished) == 1 and not any(".tmp-" in p for p in written), written


def subprocess_free_cli(path: Path, *args: str) -> tuple[int, str]:
    """Run the CLI in-process (default: --dry-run), capturing stderr."""
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(path), *(args or ("--dry-run",))])
    return code, err.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_traceback(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("b") / "r.yaml"
    path.write_bytes(raw)
    code, err = subprocess_free_cli(path)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("key,value,fragment", [
    ("budget.flops", 0, "positive"),
    ("budget.flops", 1, "affords no training batch"),
    ("data.batch_size", 100000, "less than or equal"),
    ("data.batch_size", 10000, "fewer than one batch"),
    ("output.root", "/proc/forbidden", "output"),
])
def test_specific_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any,
                             fragment: str) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{key: value}))
    code = main([str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert str(path) in err or "output" in key


def test_huge_and_unwritable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: x\nnotes: " + "a" * 2_000_000 + "\n")
    assert main([str(big)]) == 2 and "limited to" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2 and "directory" in capsys.readouterr().err


class FakeWandB:
    """A local stand-in for api.wandb.ai: answers the few GraphQL operations and uploads an online
    run needs, and records every request (the key arrives as HTTP basic auth `api:<key>`)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests: list[tuple[str, str, bytes]] = []  # (path, Authorization, body)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append((self.path, self.headers.get("Authorization", ""), body))
                out = fake.answer(self.path, body, self.server.server_address[1])
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def answer(path: str, body: bytes, port: int) -> dict[str, Any]:
        import re
        try:
            req = json.loads(body)
            op = re.search(r"(?:query|mutation)\s+(\w+)", req.get("query", "")).group(1)  # type: ignore[union-attr]
            variables = req.get("variables") or {}
        except Exception:  # noqa: BLE001 - file stream and uploads are not GraphQL
            op, variables = "", {}
        if op == "UpsertBucket":
            return {"data": {"upsertBucket": {"inserted": True, "bucket": {
                "id": "QnVja2V0OjE=", "name": "run1", "displayName": "run1", "config": "{}",
                "historyLineCount": 0, "eventsLineCount": 0, "summaryMetrics": "{}",
                "project": {"id": "UHJvamVjdDox", "name": "effrecipes-test",
                            "entity": {"id": "RW50aXR5OjE=", "name": "ent"}}}}}}
        if op == "CreateRunFiles":
            return {"data": {"createRunFiles": {"runID": "run1", "uploadHeaders": [], "files": [
                {"name": f, "uploadUrl": f"http://127.0.0.1:{port}/upload/{f}"}
                for f in variables.get("files", [])]}}}
        if path.endswith("file_stream"):
            return {"exitcode": None, "limits": {}}
        return {"data": {}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_wandb_api_key_used_online_but_never_written(tmp_path: Path) -> None:
    """W&B online (mode auto with a key) against a local stand-in server: the key is really used -
    every request carries it as HTTP auth - yet it is never sent as data (config, summary, logs,
    uploaded files), never printed, and in no file the run, W&B or its settings wrote."""
    import base64

    secret = "5e7ce1a1" * 5  # 40 characters, the shape of a real key
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7,
                                      "loggers.wandb": {"enabled": True, "mode": "auto",
                                                        "project": "effrecipes-test"}})
    path = write_recipe(tmp_path, recipe)
    fake = FakeWandB()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update({"WANDB_API_KEY": secret, "WANDB_BASE_URL": fake.url, "WANDB_DIR": str(tmp_path),
                "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
                "WANDB_DATA_DIR": str(home / "data"), "HOME": str(home), "EFFRECIPES_THREADS": "1"})
    try:
        proc = subprocess.run([sys.executable, "-m", "effrecipes.cli", str(path), "--json"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        fake.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["stop_reason"] == "flops"  # --json: stdout is JSON only
    # online, and the key was used: every API request authenticated with it
    auth = "Basic " + base64.b64encode(f"api:{secret}".encode()).decode()
    assert any(p == "/graphql" for p, _, _ in fake.requests), fake.requests
    api = [(p, a) for p, a, _ in fake.requests if not p.startswith("/upload/")]  # uploads: signed URLs
    assert api and all(a == auth for _, a in api), api
    assert any(p.startswith("/upload/") for p, _, _ in fake.requests), [p for p, _, _ in fake.requests]
    assert list(tmp_path.glob("wandb/run-*")) and not list(tmp_path.glob("wandb/offline-run-*"))
    forms = [secret.encode(), base64.b64encode(f"api:{secret}".encode())]
    for p, _, body in fake.requests:
        assert not any(f in body or f.decode() in p for f in forms), (p, body[:200])
    assert secret not in proc.stdout + proc.stderr
    for p in tmp_path.rglob("*"):
        if p.is_file():
            content = p.read_bytes()
            assert not any(f in content for f in forms), p
