"""The frozen BC policy on real Ray Serve (local cluster): log-probs equal a direct forward with the memory carried
by the caller, requests of several caller actors merged into one batch, a killed replica survived by retries,
deployment errors surfaced at once, and teardown of one application only. Serve starts once for the module."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from vpt_ray.config import from_dict, to_dict
from vpt_ray.models import ModelConfig, VPTPolicy, load_preset, save_checkpoint
from vpt_ray.rl.serving import (
    DEPLOYMENT_NAME,
    PretrainedApp,
    PretrainedClient,
    PretrainedServeError,
)

T = 8  # frames per row; the memory (16 frames) spans two rows, so carried state matters
APP = "f2-test-frozen"


def small_policy(seed: int = 0) -> VPTPolicy:
    """The Crafter preset, narrower and with a short context, random heads (so log-probs are far from uniform)."""
    data = to_dict(load_preset("crafter-policy-small"))
    data["net"].update(timesteps=T, attention_memory_size=T + 16, hidsize=64, impala_chans=[8, 16, 16],
                       attention_heads=2)  # fmt: skip
    torch.manual_seed(seed)
    policy = VPTPolicy(from_dict(ModelConfig, data)).eval()
    with torch.no_grad():
        for head in policy.pi_head.values():
            head.linear_layer.weight.normal_(0.0, 0.3)
    return policy


def rows(n: int, seed: int, first_at: dict[int, int] | None = None):
    """n consecutive rows of one stream: frames (T, 64, 64, 3), first (T,) (row 0 starts the episode)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        first = np.zeros(T, dtype=bool)
        if r == 0:
            first[0] = True
        if first_at and r in first_at:
            first[first_at[r]] = True
        out.append((rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8), first))
    return out


def direct(policy: VPTPolicy, stream):
    """Log-probs of each row from a local forward, the memory carried row to row."""
    state, out = None, []
    with torch.no_grad():
        for frames, first in stream:
            res = policy(torch.from_numpy(frames[None]), torch.from_numpy(first[None]), state)
            state = res.state
            out.append({k: v[0].numpy() for k, v in res.logprobs.items()})
    return out


def replica_actor(app: str):
    import ray

    named = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{app}#{DEPLOYMENT_NAME}#")]  # fmt: skip
    assert len(named) == 1, named
    return ray.get_actor(named[0]["name"], namespace=named[0]["namespace"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local Ray cluster (as tests/conftest.py's ``ray_local``), Serve, one app of the small policy."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2,
                 log_to_driver=False, configure_logging=False)  # fmt: skip
    policy = small_policy()
    ckpt = save_checkpoint(policy, tmp_path_factory.mktemp("frozen") / "ckpt")
    # a long batch wait, so requests that arrive together are batched together even on a loaded machine
    app = PretrainedApp.start(ckpt, name=APP, num_cpus=1, max_batch_size=8, batch_wait_timeout_s=0.3)
    yield policy, ckpt, app
    app.stop()
    serve.shutdown()


def test_logprobs_equal_a_direct_forward_with_the_memory_carried_by_the_caller(served):
    policy, _, app = served
    client = app.client(timeout_s=60)
    a = rows(3, seed=1, first_at={1: 5})  # an episode ends inside row 1: a first flag mid-row
    b = rows(3, seed=2)
    want_a, want_b = direct(policy, a), direct(policy, b)
    state_a = state_b = None
    for r in range(3):  # each call: one row of each stream, as an env runner with 2 sub-envs sends them
        got = client.logprobs([{"frames": a[r][0], "first": a[r][1], "state": state_a},
                               {"frames": b[r][0], "first": b[r][1], "state": state_b}])  # fmt: skip
        for resp, want in ((got[0], want_a[r]), (got[1], want_b[r])):
            assert set(resp["logprobs"]) == {"action"} and resp["logprobs"]["action"].dtype == np.float32
            assert resp["logprobs"]["action"].shape == (T, 17)
            np.testing.assert_allclose(resp["logprobs"]["action"], want["action"], atol=1e-5, rtol=0)
        state_a, state_b = got[0]["state"], got[1]["state"]
    assert state_a["mask"].dtype == np.bool_ and state_a["k"].shape == (2, 16, 64)  # no batch dim
    # the carried state matters: row 2 without it is a different answer
    fresh = client.logprobs([{"frames": b[2][0], "first": b[2][1], "state": None}])[0]
    assert np.abs(fresh["logprobs"]["action"] - want_b[2]["action"]).max() > 1e-3
    # and a mid-row first cuts the memory exactly: what follows t=5 in row 1 does not depend on row 0
    other_start = rows(1, seed=9)[0]
    alt = client.logprobs([{"frames": other_start[0], "first": other_start[1], "state": None}])[0]
    got = client.logprobs([{"frames": a[1][0], "first": a[1][1], "state": alt["state"]}])[0]
    np.testing.assert_allclose(got["logprobs"]["action"][5:], want_a[1]["action"][5:], atol=1e-5, rtol=0)
    assert np.abs(got["logprobs"]["action"][:5] - want_a[1]["action"][:5]).max() > 1e-3


def test_requests_of_several_caller_actors_are_merged_into_one_forward(served):
    import ray

    policy, _, app = served

    @ray.remote(num_cpus=0)
    class Runner:  # stands in for an env runner: its own client, 4 rows per call
        def __init__(self, app_name):
            self.client = PretrainedClient(app_name, timeout_s=60)

        def ready(self):
            self.client._logprobs_handle()  # the handle (and its router) exists before the timed call

        def sample(self, requests, start_at):
            time.sleep(max(0.0, start_at - time.time()))
            return [g["logprobs"]["action"] for g in self.client.logprobs(requests)]

    runners = [Runner.remote(APP) for _ in range(3)]
    ray.get([r.ready.remote() for r in runners])
    before = app.stats()[0]
    start_at = time.time() + 1.0  # all three send at the same moment
    streams = [rows(4, seed) for seed in range(3)]
    results = ray.get([r.sample.remote([{"frames": f, "first": first, "state": None} for f, first in stream], start_at)
                       for r, stream in zip(runners, streams)])  # fmt: skip
    after = app.stats()[0]

    new_batches = after["batch_sizes"][len(before["batch_sizes"]):]
    assert sum(new_batches) == 12 and after["rows"] - before["rows"] == 12
    assert max(new_batches) > 4, new_batches  # more than one runner's rows in one batch (max_batch_size 8)
    assert after["frames"] - before["frames"] == 12 * T
    assert after["device"] == "cpu" and after["torch_threads"] == 1
    for stream, got in zip(streams, results):  # fresh state per row: each row equals a fresh direct forward
        for (frames, first), lp in zip(stream, got):
            want = direct(policy, [(frames, first)])[0]["action"]
            np.testing.assert_allclose(lp, want, atol=1e-5, rtol=0)
    for r in runners:
        ray.kill(r)


def test_bad_requests_fail_at_once_and_alone(served):
    _, _, app = served
    client = app.client(timeout_s=60)
    frames, first = rows(1, seed=3)[0]
    with pytest.raises(ValueError, match="request 1: 'frames' must be a uint8 array"):
        client.logprobs([{"frames": frames, "first": first}, {"frames": frames.astype(np.float32), "first": first}])
    with pytest.raises(ValueError, match=r"request 0: 'first' must be a bool array \(8,\)"):
        client.logprobs([{"frames": frames, "first": first[:4]}])

    # wrong frame size for this model: only the deployment knows; its error is raised at once, never retried,
    # and a good request batched with it is answered
    good: dict = {}
    thread = threading.Thread(target=lambda: good.update(client.logprobs([{"frames": frames, "first": first}])[0]))
    thread.start()
    t0 = time.monotonic()
    with pytest.raises(PretrainedServeError, match=r"request 0: ValueError: .*'frames' must be \(T, 64, 64, 3\)"):
        client.logprobs([{"frames": frames[:, :32], "first": first}])
    assert time.monotonic() - t0 < 20 and client.retries == 0
    thread.join(60)
    assert good["logprobs"]["action"].shape == (T, 17)
    bad_state = {"mask": np.zeros((2, 16), bool), "k": np.zeros((2, 15, 64), np.float32),
                 "v": np.zeros((2, 16, 64), np.float32)}  # fmt: skip
    with pytest.raises(PretrainedServeError, match=r"state\['k'\] must be float32 \(2, 16, 64\)"):
        client.logprobs([{"frames": frames, "first": first, "state": bad_state}])


def test_an_unknown_app_is_an_error_naming_it(served):
    frames, first = rows(1, seed=4)[0]
    with pytest.raises(LookupError, match="'f2-no-such-app' has no FrozenPolicy deployment"):
        PretrainedClient("f2-no-such-app", timeout_s=3).logprobs([{"frames": frames, "first": first}])


def test_stop_deletes_only_its_own_app(served):
    from ray import serve

    policy, ckpt, app = served
    with pytest.raises(ValueError, match="already running"):
        PretrainedApp.start(ckpt, name=APP)
    other = PretrainedApp.start(ckpt, name="f2-test-other", num_cpus=0.5)
    assert set(serve.status().applications) >= {APP, "f2-test-other"}
    assert other.stats()[0]["torch_threads"] == 1
    other.stop()
    apps = serve.status().applications
    assert "f2-test-other" not in apps and apps[APP].status == "RUNNING"
    frames, first = rows(1, seed=5)[0]
    got = app.client(timeout_s=60).logprobs([{"frames": frames, "first": first}])[0]
    np.testing.assert_allclose(got["logprobs"]["action"], direct(policy, [(frames, first)])[0]["action"], atol=1e-5)


def test_start_refuses_a_bad_checkpoint_before_deploying(served, tmp_path):
    from ray import serve

    from vpt_ray.config import ConfigError

    with pytest.raises(ConfigError, match="model.yaml"):
        PretrainedApp.start(tmp_path, name="f2-bad")
    _, ckpt, _ = served
    with pytest.raises(ValueError, match="invalid max_batch_size=0"):
        PretrainedApp.start(ckpt, name="f2-bad", max_batch_size=0)
    assert "f2-bad" not in serve.status().applications


def test_a_killed_replica_is_survived_by_retries(served, caplog):
    import ray

    policy, _, app = served
    client = app.client(timeout_s=120)
    stream = rows(2, seed=6)
    want = direct(policy, stream)
    pid_before = app.stats()[0]["pid"]
    done, errors = [], []
    killed = threading.Event()

    def run():  # a runner that keeps a request in flight, carrying its memory row to row
        try:
            while len([d for d in done if d]) < 3:
                state = None
                for r, (frames, first) in enumerate(stream):
                    got = client.logprobs([{"frames": frames, "first": first, "state": state}])[0]
                    np.testing.assert_allclose(got["logprobs"]["action"], want[r]["action"], atol=1e-5, rtol=0)
                    state = got["state"]
                done.append(killed.is_set())
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    while not done and thread.is_alive():
        time.sleep(0.01)
    time.sleep(0.15)  # the next request is now inside the replica, waiting for its batch (0.3 s)
    ray.kill(replica_actor(APP), no_restart=True)
    killed.set()
    # a client with a short deadline gives up while the replica is being replaced, naming the app
    frames, first = stream[0]
    with pytest.raises(TimeoutError, match=f"'{APP}': 1 of 1 frozen-policy requests unanswered after 1 s"):
        PretrainedClient(APP, timeout_s=1).logprobs([{"frames": frames, "first": first}])
    thread.join(180)
    assert not thread.is_alive() and not errors, errors
    assert client.retries >= 1  # some request met the dead replica and was resent
    assert "resending 1 frozen-policy request(s)" in caplog.text and "ActorDiedError" in caplog.text
    assert app.stats()[0]["pid"] != pid_before  # answered by the replica Serve started in its place
