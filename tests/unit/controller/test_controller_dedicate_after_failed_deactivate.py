"""An in-place dedication whose co-resident's Deactivate failed once (found in review): a real worker whose KV page
unmap fails answers the Deactivate with DriverError and keeps the co-resident listed until the retry
(executor.DEACTIVATE_TRIES) succeeds; the policy, which removed the co-resident at its stop, dedicates the instance
left in the meantime, and the worker refuses that Dedicate ("only a shared instance alone on its worker"). It was
sent once and the refusal only logged: the policy took the instance for dedicated for good while its engine kept
its co-served KV share, and its worker took it for shared. Now the Dedicate goes out again once the worker is
seen with the instance alone."""

from warmserve import _C
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.policy import actions as A
from warmserve.policy.config import policy_config_from_dict

from controller_harness import demo_path, in_process_worker, run, until

OWNER, GUEST = "llama-20m", "qwen2-30m"


def _controller(models) -> Controller:
    # no scale-in while the test holds the instances: they carry no load
    pc = policy_config_from_dict({"window_s": 30, "min_lifetime_s": 600, "last_instance_hold_s": 600})
    cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=1.5, policy_config=pc)
    return Controller(ClusterConfig(models=tuple(m.spec for m in models), controller=cc), models)


def _mine(w, name: str):
    return next((i for i in (w.stats.instances if w.stats is not None else ()) if i.name == name), None)


def test_a_dedicate_refused_beside_a_co_resident_whose_deactivate_failed_is_sent_again():
    models = [controller_model(ModelSpec(path=demo_path(m))) for m in (OWNER, GUEST)]

    async def main():
        c = _controller(models)
        ep = await c.start()
        with in_process_worker(ep, 768 << 20):
            try:
                # no policy: nothing but this test's actions starts or stops instances (its prewarms took the models)
                assert await until(lambda: sum(w.ready for w in c.gpu_workers) >= 1, 10)
                w = c.gpu_workers[0]
                c.driver.apply(A.StartInstance("i-1", OWNER, (w.gpu_id,), kv_fraction=0.4), c.now_s())
                c.driver.apply(A.StartInstance("i-2", GUEST, (w.gpu_id,), kv_fraction=0.4), c.now_s())
                assert await until(lambda: all(i in c.state.instances and c.state.instances[i].ready
                                               for i in ("i-1", "i-2")), 30)
                assert await until(lambda: _mine(w, OWNER) is not None and _mine(w, GUEST) is not None, 5)
                share = _mine(w, OWNER).kv.kv_blocks_total
                assert _mine(w, OWNER).shared
                _C._debug_fail_after("protect_hard", 2)  # the guest's Deactivate fails once: it stays listed a while
                c.driver.apply(A.StopInstance("i-2"), c.now_s())  # nothing in flight: it leaves the state at once
                c.driver.apply(A.Dedicate("i-1"), c.now_s())  # what the policy's next tick sends: the owner is alone
                assert await until(lambda: _mine(w, GUEST) is None, 5), "the guest's Deactivate was not retried"
                # the worker ends as the policy thinks: the owner dedicated, its KV cap past its share. Each policy tick
                # starts with the executor's sync of the workers' stats (PolicyDriver.tick): done here by hand

                def dedicated() -> bool:
                    c.executor.sync(c.now_s())
                    return _mine(w, OWNER) is not None and not _mine(w, OWNER).shared \
                        and _mine(w, OWNER).kv.kv_blocks_total > share

                ok = await until(dedicated, 5)
                mine = _mine(w, OWNER)
                assert ok, (f"the owner stayed {'shared' if mine.shared else 'dedicated'} with a KV cap of "
                            f"{mine.kv.kv_blocks_total} blocks (share {share}) after its Dedicate was refused")
                # the answer reached the driver
                assert await until(lambda: c.metrics.dedicated.get(model=OWNER) == 1, 5)
                assert c.state.instances["i-1"].kv_blocks_total == mine.kv.kv_blocks_total
            finally:
                await c.close(drain=False)

    run(main())
