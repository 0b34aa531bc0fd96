"""Which server (machine) the controller puts a worker on: the host its Hello names; for a Hello without one (a
worker from before ``Hello.host``), the host in an id of the forms warmserve makes, and otherwise a server of its
own. Found in review: any id with two dashes was read as HOST-PID-DEVICE, so gpu-node-1 and gpu-node-2, or
rack-a-w0 and rack-b-w0, were one server whatever machines they ran on, and tensor-parallel groups spanned
machines."""

from warmserve import protocol as P
from warmserve.controller.workers import host_of

from controller_harness import Peer, make_controller, run


class HostPeer(Peer):
    """A worker whose Hello names its host ("" : a worker from before the field)."""

    def __init__(self, endpoint: str, wid: str, host: str):
        self.host = host
        super().__init__(endpoint, wid)

    async def run(self):
        await self.send(P.Hello(worker_id=self.wid, device=self.device, pid=self.pid, capacity_bytes=1 << 30,
                                page_bytes=2 << 20, host=self.host,
                                protocol_version=P.PROTOCOL_VERSION))
        while True:
            msg = P.decode_request(await self.sock.recv())
            self.got.append(msg)
            await self.handle(msg)


def test_ids_warmserve_makes_name_their_host_and_others_are_servers_of_their_own():
    assert host_of("box-4711-cpu") == "box"  # `warmserve worker` with no --worker-id
    assert host_of("my-box-4711w0-cpu0") == "my-box"  # `warmserve serve`'s local workers
    assert host_of("vm.ab12cd34-r77-gpu3") == "vm.ab12cd34"  # Ray's
    for own in ("gpu-node-1", "rack-a-w0", "nodeA-gpu0", "w0"):
        assert host_of(own) == own


def test_workers_are_put_on_servers_by_the_host_their_hello_names(model):
    workers = {"rack-a-w0": "machine-a", "rack-a-w1": "machine-b", "rack-a-w2": "machine-a",
               "box-12-cpu0": "", "box-13-cpu0": "", "gpu-node-1": "", "gpu-node-2": ""}

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peers = [HostPeer(ep, wid, host) for wid, host in workers.items()]
        try:
            await c.wait_for_workers(len(workers), 10)
            server = {w.worker_id: c.state.gpus[w.gpu_id].server_id for w in c.gpu_workers}
            hosts = {w.worker_id: w.host for w in c.gpu_workers}
        finally:
            for p in peers:
                p.close()
            await c.close(drain=False)
        assert hosts["rack-a-w0"] == "machine-a" and hosts["rack-a-w1"] == "machine-b", hosts
        assert server["rack-a-w0"] == server["rack-a-w2"] != server["rack-a-w1"], server
        assert server["box-12-cpu0"] == server["box-13-cpu0"], server  # old workers: the host in the id
        assert server["gpu-node-1"] != server["gpu-node-2"], server
        assert len(set(server.values())) == 5, server

    run(main())
