"""A load whose threads cannot start for want of address space (`ulimit -v`) fails, names that limit and its fix,
and the process lives on. Found in review (`warmserve serve` under `ulimit -v 3000000`): glibc reports a thread stack
past RLIMIT_AS as EAGAIN, the errno of a pids limit, and the load told the user to raise the thread limit (`ulimit
-u`), which does nothing here. Before that (an earlier review) a copier thread that could not be created threw
std::system_error out of the load's own thread, and std::terminate ended the whole worker.

RLIMIT_AS is process-wide: each case runs in a child interpreter."""

from test_mem_hardening import run_child

#: Prints, for the load the body starts under its limit: the error's class, its limit and whether the message has
#: the address-space fix and the thread-limit one; then the same load with no limit, which must work.
UNDER_THE_LIMIT = """
    import resource
    from warmserve.errors import DriverError
    n = 4 << 20
    pool = PagePool(n, page_bytes=PAGE)
    s = pool.create_slot(n, "w")
    path = big_file(n)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + ROOM, resource.RLIM_INFINITY))
    try:
        s.load([(path, 0, 0, n)], threads=THREADS, chunk_bytes=64 << 10).wait()
        print("loaded")
    except DriverError as e:
        msg = str(e)
        print(type(e).__name__, e.fields.get("limit"), e.fields.get("limit_value") == vm + ROOM,
              "ulimit -v unlimited" in msg, "VmSize" in msg, "ulimit -u" in msg)
        print(msg, file=sys.stderr)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    s.load([(path, 0, 0, n)], threads=2).wait()  # the slot and pool still work
    print("again", int(s.tensor(0, (1,), torch.uint8)[0]))
"""

NAMED = ["DriverError", "RLIMIT_AS", "True", "True", "True", "False", "again", "5"]


def test_a_load_with_no_room_for_a_thread_stack_names_the_address_space_limit(tmp_path):
    # 1 MiB of room: no new thread stack (RLIMIT_STACK's 8 MiB, or glibc's 2 MiB); the load's own thread may still
    # start on a stack glibc kept from an ended thread, and then its copier cannot
    out = run_child(UNDER_THE_LIMIT.replace("ROOM", "(1 << 20)").replace("THREADS", "1"), tmp_dir=tmp_path)
    assert out == NAMED, out  # before: "... EAGAIN ...; nothing was loaded. Fix: raise the process's thread limit"


def test_a_load_with_room_for_a_few_copiers_names_the_address_space_limit_and_fewer_threads(tmp_path):
    # room for the load's own thread and a few copiers, not for 64 stacks of 8 MiB (2 MiB where RLIMIT_STACK is
    # unlimited: 64 of them still do not fit 48 MiB)
    body = UNDER_THE_LIMIT.replace("ROOM", "(48 << 20)").replace("THREADS", "64")
    body = body.replace('        print(msg, file=sys.stderr)\n', '        print(msg, file=sys.stderr)\n'
                        '        print("fewer threads" in msg)\n')
    out = run_child(body, tmp_dir=tmp_path)
    assert out == NAMED[:6] + ["True"] + NAMED[6:], out  # before: "... lower threads or raise the thread limit"
