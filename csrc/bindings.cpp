// pybind11 module warmserve._C: the memory core (pool.h, loader.h, backends) as seen from Python. Only
// warmserve.memory imports it; that package adds the torch views and the Python-facing documentation.
//
// GIL policy. Every call that takes the pool mutex or blocks (map, unmap, move, grow, shrink, close, pool creation,
// queries, waiting on a load) releases the GIL first, so other Python threads run meanwhile and a thread waiting for
// the pool mutex never holds the GIL. A constructor (py::init) never takes the nogil() call guard: pybind11 runs the
// factory and then registers the new instance in its internals inside the guarded call, so under the guard the
// registration ran without the GIL and pools made on two threads at once crashed the process (found in review; pybind11
// issue #5473). make_pool releases the GIL inside, around the construction only. C++ threads (the loader's mapper and
// copiers) never call back into Python and never take the GIL: progress is polled by the waiting Python thread.
// Together this rules out the one deadlock shape possible here (a thread holding the pool mutex waiting for the GIL
// while the GIL holder waits for the mutex). Pool.close and Slot.close also wait (on the pool's condition variable,
// mutex released) for running loads to roll back: the GIL is released then too, and the loader threads they wait for
// never need it. View creation (make_view) releases the GIL too, and takes it back only after it has let go of the
// mutex. What takes the pool mutex with the GIL held is a destructor run by Python: a view's DLPack deleter (it unpins
// pages; when it drops a slot's last reference, ~Slot unmaps and releases the slot, and on cuda first waits for the
// device's queued work), and ~Slot or ~Pool when Python deallocates the last reference to a Slot or Pool (~Pool closes
// the pool: it cancels the running loads and waits, the mutex released, for them to roll back). That cannot deadlock,
// because no holder of the pool mutex ever waits for the GIL: Python-facing calls release the GIL before they take the
// mutex and let go of the mutex before they take the GIL back, and the loader threads that ~Pool waits for never take
// the GIL at all. Kernel launches (kernels.h) release the GIL too: a launch blocks when the stream's queue is full, and
// cudaMemcpyAsync may wait. A drain (cuda: a context synchronize, before an unmap or a move) waits for CUDA graph
// captures on other threads to end (cuda_capture_enter / _exit, backend.h); it runs with the GIL released, except in
// ~Slot and ~Pool run by Python (above), which therefore do not wait for captures (a capture needs the GIL to go on).
//
// A finished load's source buffers are let go of (LoadJob wait_for, result, finished) with the GIL held and no
// mutex held: a source that is a slot's view runs its DLPack deleter then, as above.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <exception>

#include "backend.h"
#include "cgroup_memory.h"
#include "errors.h"
#include "kernels/kernels.h"
#include "loader.h"
#include "pool.h"

namespace py = pybind11;
using namespace ws;

namespace {

// ---- DLPack (the ABI from the DLPack specification, declared here to need no header)
struct DLDevice { int32_t device_type, device_id; };
struct DLDataType { uint8_t code, bits; uint16_t lanes; };
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

// One view: the managed tensor, its shape, and the pin that keeps its pages mapped (pinned=True) and the
// slot's reservation alive (always), until the consumer (torch) frees its storage.
struct ViewCtx {
  DLManagedTensor mt;
  int64_t shape[1];
  Pin pin;
  ViewCtx(std::shared_ptr<Slot> s, uint64_t off, uint64_t n, bool pinned) : pin(std::move(s), off, n, pinned) {}
};

void view_deleter(DLManagedTensor* mt) { delete static_cast<ViewCtx*>(mt->manager_ctx); }

void capsule_destructor(PyObject* cap) {
  if (PyCapsule_IsValid(cap, "dltensor")) {  // never consumed: free it here
    auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
    mt->deleter(mt);
  }
}

py::capsule make_view(const std::shared_ptr<Slot>& s, uint64_t byte_offset, uint64_t nbytes, bool pinned) {
  ViewCtx* ctx;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> g(s->pool->mu);
    s->check_open_locked();
    uint64_t pb = s->page_bytes(), reserved = s->n_pages * pb;
    if (byte_offset > reserved || nbytes > reserved - byte_offset)
      throw invalid("view of bytes [" + std::to_string(byte_offset) + ", " + std::to_string(byte_offset + nbytes) +
                    ") is outside slot '" + s->tag + "' (" + std::to_string(reserved) + " bytes reserved)");
    uint64_t first = byte_offset / pb, last = nbytes ? (byte_offset + nbytes - 1) / pb : first;
    uint64_t n = nbytes ? last - first + 1 : 0;
    if (pinned)
      for (uint64_t i = first; i < first + n; ++i)
        if (s->table[i] < 0)
          throw invalid("a pinned view needs its pages mapped: page " + std::to_string(i) + " of slot '" + s->tag +
                        "' is not (map it first, or use pinned=False for a range touched only where mapped)");
    ctx = new ViewCtx(s, first, n, pinned && n > 0);
  }
  ctx->shape[0] = int64_t(nbytes);
  DLTensor& t = ctx->mt.dl_tensor;
  t.data = reinterpret_cast<void*>(s->base + byte_offset);
  t.device = {s->pool->backend->dlpack_device_type(), s->pool->backend->device()};
  t.ndim = 1;
  t.dtype = {1 /* kDLUInt */, 8, 1};
  t.shape = ctx->shape;
  t.strides = nullptr;
  t.byte_offset = 0;
  ctx->mt.manager_ctx = ctx;
  ctx->mt.deleter = view_deleter;
  PyObject* cap = PyCapsule_New(&ctx->mt, "dltensor", capsule_destructor);
  if (!cap) {
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

// A load job as Python holds it: the buffers it reads from stay referenced until the job is seen finished.
struct PyLoadJob {
  std::shared_ptr<LoadJob> job;
  py::list keep;
  // Called with the GIL held (the buffers' last references may go here) once the job is finished: its copiers are
  // joined and its queued copies drained, so nothing reads the buffers any more. They then go with the caller's
  // last reference, not with this object, which the engine keeps for the model's whole life (found in review).
  void release_sources() {
    if (!keep.empty()) keep = py::list();
  }
  ~PyLoadJob() {
    if (job) {
      py::gil_scoped_release nogil;
      job->cancel();
      job->join();
    }
  }
};

const char* error_class(ErrorKind k) {
  switch (k) {
    case ErrorKind::InvalidArgument: return "InvalidArgumentError";
    case ErrorKind::OutOfMemory: return "OutOfMemoryError";
    case ErrorKind::MappingLimit: return "MappingLimitError";
    case ErrorKind::ViewsAlive: return "ViewsAliveError";
    case ErrorKind::Closed: return "ClosedError";
    case ErrorKind::Driver: return "DriverError";
    case ErrorKind::BackendUnavailable: return "BackendUnavailableError";
    case ErrorKind::Cancelled: return "CancelledError";
    case ErrorKind::Timeout: return "TimeoutError_";
    case ErrorKind::SlotUnusable: return "SlotUnusableError";
  }
  return "WarmServeError";
}

void raise_python(const Error& e) {
  py::object cls = py::module_::import("warmserve.errors").attr(error_class(e.kind));
  py::dict kw;
  switch (e.kind) {
    case ErrorKind::MappingLimit:
      kw["mappings"] = e.mappings;
      kw["max_mappings"] = e.max_mappings;
      [[fallthrough]];
    case ErrorKind::OutOfMemory:
      kw["asked_bytes"] = e.asked_bytes;
      kw["free_bytes"] = e.free_bytes;
      kw["total_bytes"] = e.total_bytes;
      break;
    case ErrorKind::Driver:
      kw["code"] = e.code;
      kw["name"] = e.name;
      break;
    case ErrorKind::Cancelled:
      kw["done_bytes"] = e.free_bytes;
      kw["total_bytes"] = e.asked_bytes;
      break;
    case ErrorKind::SlotUnusable:
      kw["hole_bytes"] = e.asked_bytes;
      break;
    default:
      break;
  }
  if (!e.limit.empty()) {
    kw["limit"] = e.limit;
    kw["limit_value"] = e.limit_value;
  }
  // A message may carry a path's bytes that are not UTF-8 (Linux file names are bytes): backslash escapes for
  // those, not a UnicodeDecodeError in place of the error (found in review).
  const char* what = e.what();
  py::object msg = py::reinterpret_steal<py::object>(
      PyUnicode_DecodeUTF8(what, Py_ssize_t(std::strlen(what)), "backslashreplace"));
  if (!msg) throw py::error_already_set();
  py::object inst = cls(msg, **kw);
  PyErr_SetObject(cls.ptr(), inst.ptr());
}

// Called with the GIL held, by py::init: it releases the GIL only around the backend and the pool, since pybind11
// registers the new Python instance after this returns and that registration needs the GIL (module comment).
std::shared_ptr<Pool> make_pool(uint64_t capacity, const std::string& backend, uint64_t page_bytes, int device,
                                bool prefault) {
  py::gil_scoped_release nogil;
  std::unique_ptr<Backend> b;
  if (backend == "host") b = make_host_backend(capacity, page_bytes, prefault);
  else if (backend == "cuda") b = make_cuda_backend(capacity, page_bytes, device);
  else throw invalid("backend must be 'host' or 'cuda', not '" + backend + "'");
  return std::make_shared<Pool>(std::move(b));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "warmserve memory core (use warmserve.memory, not this module)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise_python(e);
    }
  });
  m.def("version", [] { return "0.1.0"; });
  m.def("cuda_compiled", &cuda_compiled, "whether this build contains the cuda backend");
  // Reads small files only, with the GIL released (it takes no lock); the tuple is built with the GIL back.
  m.def(
      "cgroup_memory",
      [](const std::string& proc_dir) {
        CgroupMemory c;
        {
          py::gil_scoped_release nogil;
          c = cgroup_memory(proc_dir);
        }
        return py::make_tuple(c.limit_bytes, c.room_bytes, c.file);
      },
      py::arg("proc_dir") = "/proc/self",
      "(limit bytes, room bytes, file) of the process's memory cgroup; limit 0: none (cgroup_memory.h)");
  m.def("cuda_host_register", &cuda_host_register, py::arg("ptr"), py::arg("nbytes"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "page-lock host memory for DMA (cuMemHostRegister, portable); True when this call registered it");
  m.def("cuda_host_unregister", &cuda_host_unregister, py::arg("ptr"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>());
  m.def("cuda_capture_enter", &capture_enter, py::call_guard<py::gil_scoped_release>(),
        "a CUDA graph capture begins on this thread: pool drains (context synchronizes) wait until it ends");
  m.def("cuda_capture_exit", &capture_exit, py::call_guard<py::gil_scoped_release>(),
        "the capture begun by cuda_capture_enter on this thread ended");
  m.def("_debug_fail_after", &debug_fail_after, py::arg("op"), py::arg("k"),
        "TEST-ONLY: make the k-th next host-backend call of op (mmap, mremap, protect, noreplace) fail; k=0 "
        "disarms (see backend.h)");

  using nogil = py::call_guard<py::gil_scoped_release>;

  // ---- CUDA kernels (kernels/kernels.h): integers in, nothing out; warmserve.memory.kernels checks the tensors.
  m.def("kernels_compiled", &kernels::compiled, "whether this build contains the CUDA kernels (nvcc was found)");
  m.def("kernels_device_count", &kernels::device_count, nogil(),
        "GPUs the CUDA runtime of the kernels sees (0 without a driver)");
  // An atomic flag: no lock, so the GIL may be held.
  m.def("kernel_set_programmatic_launch", &kernels::set_programmatic_launch, py::arg("on"),
        "launch the decode step's kernels with programmatic dependent launch (sm_90+); returns the previous setting");
  m.def("kernel_programmatic_launch", &kernels::programmatic_launch);
  m.def("kernel_write_kv", &kernels::write_kv, py::arg("cache"), py::arg("k"), py::arg("v"), py::arg("rows"),
        py::arg("n_tokens"), py::arg("row_elems"), py::arg("k_off"), py::arg("v_off"), py::arg("dtype"),
        py::arg("stream"), nogil());
  m.def(
      "kernel_paged_attention",
      [](uintptr_t q, uintptr_t out, uintptr_t cache, uintptr_t block_tables, int64_t table_stride, uintptr_t row_seq,
         uintptr_t row_len, int64_t n_rows, int n_heads, int kv_heads, int head_dim, int64_t rows_per_block,
         int block_tokens, int64_t k_off, int64_t v_off, int window, float scale, int split_tokens, int n_splits,
         uintptr_t workspace, int dtype, uintptr_t stream, bool gqa_shared, int warps, uintptr_t counters) {
        kernels::PagedAttention a;
        a.q = q, a.out = out, a.cache = cache, a.block_tables = block_tables, a.table_stride = table_stride;
        a.row_seq = row_seq, a.row_len = row_len, a.n_rows = n_rows, a.n_heads = n_heads, a.kv_heads = kv_heads;
        a.head_dim = head_dim, a.rows_per_block = rows_per_block, a.block_tokens = block_tokens, a.k_off = k_off;
        a.v_off = v_off, a.window = window, a.scale = scale, a.split_tokens = split_tokens, a.n_splits = n_splits;
        a.workspace = workspace, a.dtype = dtype, a.stream = stream, a.gqa_shared = gqa_shared, a.warps = warps;
        a.counters = counters;
        kernels::paged_attention(a);
      },
      py::arg("q"), py::arg("out"), py::arg("cache"), py::arg("block_tables"), py::arg("table_stride"),
      py::arg("row_seq"), py::arg("row_len"), py::arg("n_rows"), py::arg("n_heads"), py::arg("kv_heads"),
      py::arg("head_dim"), py::arg("rows_per_block"), py::arg("block_tokens"), py::arg("k_off"), py::arg("v_off"),
      py::arg("window"), py::arg("scale"), py::arg("split_tokens"), py::arg("n_splits"), py::arg("workspace"),
      py::arg("dtype"), py::arg("stream"), py::arg("gqa_shared") = false, py::arg("warps") = 0,
      py::arg("counters") = 0, nogil());
  m.def("kernel_prefill_attention", &kernels::prefill_attention, py::arg("q"), py::arg("out"), py::arg("cache"),
        py::arg("block_tables"), py::arg("table_stride"), py::arg("row_seq"), py::arg("row_len"), py::arg("tiles"),
        py::arg("n_tiles"), py::arg("n_heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("rows_per_block"),
        py::arg("block_tokens"), py::arg("k_off"), py::arg("v_off"), py::arg("window"), py::arg("scale"),
        py::arg("dtype"), py::arg("stream"), nogil());
  m.def("kernel_copy_blocks", &kernels::copy_blocks, py::arg("dst"), py::arg("src"), py::arg("src_idx"),
        py::arg("dst_idx"), py::arg("n"), py::arg("block_bytes"), py::arg("stream"), nogil());
  m.def("kernel_copy_bytes", &kernels::copy_bytes, py::arg("dst"), py::arg("src"), py::arg("nbytes"),
        py::arg("stream"), nogil());
  m.def("kernel_add_rms_norm", &kernels::add_rms_norm, py::arg("x"), py::arg("res"), py::arg("w"), py::arg("out"),
        py::arg("h_out"), py::arg("n_rows"), py::arg("hidden"), py::arg("eps"), py::arg("dtype"), py::arg("stream"),
        nogil());
  m.def("kernel_silu_mul", &kernels::silu_mul, py::arg("gu"), py::arg("out"), py::arg("n_rows"), py::arg("inter"),
        py::arg("dtype"), py::arg("stream"), nogil());
  m.def("kernel_gemv", &kernels::gemv, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("n_rows"),
        py::arg("k"), py::arg("n"), py::arg("dtype"), py::arg("in_flight"), py::arg("stream"), nogil());
  m.def("kernel_gemv_norm", &kernels::gemv_norm, py::arg("x"), py::arg("res"), py::arg("norm_w"), py::arg("h_out"),
        py::arg("eps"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("n_rows"), py::arg("k"), py::arg("n"),
        py::arg("dtype"), py::arg("in_flight"), py::arg("stream"), nogil());
  m.def("kernel_gemv_silu", &kernels::gemv_silu, py::arg("gu"), py::arg("w"), py::arg("b"), py::arg("y"),
        py::arg("n_rows"), py::arg("k"), py::arg("n"), py::arg("dtype"), py::arg("in_flight"), py::arg("stream"),
        nogil());
  m.attr("KERNEL_GEMV_MAX_ROWS") = kernels::kGemvMaxRows;
  m.attr("KERNEL_GEMV_STAGED_MAX_BYTES") = kernels::kGemvStagedMaxBytes;
  m.def("kernel_rope_qkv_cache", &kernels::rope_qkv_cache, py::arg("qkv"), py::arg("cos"), py::arg("sin"),
        py::arg("q"), py::arg("cache"), py::arg("rows"), py::arg("k_off"), py::arg("v_off"), py::arg("n_rows"),
        py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("dtype"), py::arg("stream"), nogil());
  m.def("kernel_rope_qkv", &kernels::rope_qkv, py::arg("qkv"), py::arg("cos"), py::arg("sin"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("n_rows"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
        py::arg("dtype"), py::arg("stream"), nogil());

  py::class_<Pool, std::shared_ptr<Pool>>(m, "Pool")
      .def(py::init(&make_pool), py::arg("capacity_bytes"), py::arg("backend"), py::arg("page_bytes"),
           py::arg("device"), py::arg("prefault"))  // no nogil() call guard: make_pool releases the GIL itself
      .def_property_readonly("backend", [](Pool& p) { return p.backend->name(); })
      .def_property_readonly("page_bytes", [](Pool& p) { return p.backend->page_bytes(); })
      .def_property_readonly("total_pages", [](Pool& p) { return p.backend->total_pages(); })
      .def_property_readonly("free_pages", [](Pool& p) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> g(p.mu);
        return p.free.size();
      })
      .def_property_readonly("huge_pages", [](Pool& p) { return p.backend->huge_pages(); })
      .def_property_readonly("device", [](Pool& p) { return p.backend->device(); })
      .def_property_readonly("closed", [](Pool& p) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> g(p.mu);
        return p.closed;
      })
      .def("close", [](Pool& p) { p.close(true); }, nogil())
      .def(
          "pages_by_tag",
          [](Pool& p) {
            std::map<std::string, uint64_t> out;
            std::vector<std::shared_ptr<Slot>> keep;  // released after the lock (~Slot takes it)
            {
              py::gil_scoped_release nogil;
              std::lock_guard<std::mutex> g(p.mu);
              for (auto& [id, w] : p.slots)
                if (auto s = w.lock()) {
                  if (s->mapped) out[s->tag] += s->mapped;
                  keep.push_back(std::move(s));
                }
              out["free"] = p.free.size();
            }
            {
              py::gil_scoped_release nogil;
              keep.clear();
            }
            return out;
          })
      .def("stats",
           [](Pool& p) {
             py::dict d;
             uint64_t v[10];
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> g(p.mu);
               uint64_t live = 0;
               for (auto& [id, w] : p.slots) live += !w.expired();
               uint64_t a[10] = {p.free.size(), p.n_map,          p.n_unmap,      p.n_move,           p.pages_mapped,
                                 p.pages_unmapped, p.pages_moved, p.backend->calls, p.bytes_loaded.load(), live};
               std::memcpy(v, a, sizeof a);
             }
             uint64_t pb = p.backend->page_bytes();
             d["backend"] = p.backend->name();
             d["device"] = p.backend->device();
             d["huge_pages"] = p.backend->huge_pages();
             d["moves_page_tables"] = p.backend->moves_page_tables();
             d["pages_per_allocation"] = p.backend->pages_per_allocation();
             d["page_bytes"] = pb;
             d["total_pages"] = p.backend->total_pages();
             d["free_pages"] = v[0];
             d["total_bytes"] = p.backend->total_pages() * pb;
             d["free_bytes"] = v[0] * pb;
             d["map_ops"] = v[1];
             d["unmap_ops"] = v[2];
             d["move_ops"] = v[3];
             d["pages_mapped"] = v[4];
             d["pages_unmapped"] = v[5];
             d["pages_moved"] = v[6];
             d["backend_calls"] = v[7];
             d["bytes_loaded"] = v[8];
             d["slots"] = v[9];
             return d;
           })
      .def("create_slot", &create_slot, py::arg("reserve_bytes"), py::arg("tag"), nogil());

  py::class_<Slot, std::shared_ptr<Slot>>(m, "Slot")
      .def_property(
          "tag",
          [](Slot& s) {
            std::string t;
            {
              py::gil_scoped_release nogil;
              std::lock_guard<std::mutex> g(s.pool->mu);
              t = s.tag;
            }
            return t;
          },
          [](Slot& s, const std::string& t) {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> g(s.pool->mu);
            s.tag = t;
          })
      .def_property_readonly("reserved_pages", [](Slot& s) { return s.n_pages; })
      .def_property_readonly("base_address", [](Slot& s) { return uint64_t(s.base); })
      .def_property_readonly("page_bytes", [](Slot& s) { return s.page_bytes(); })
      .def_property_readonly("mapped_pages", [](Slot& s) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> g(s.pool->mu);
        return s.mapped;
      })
      .def_property_readonly("closed", [](Slot& s) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> g(s.pool->mu);
        return s.closed || s.pool->closed;
      })
      .def("map", &Slot::map, nogil())
      .def("unmap", &Slot::unmap, nogil())
      .def("move_pages", &Slot::move_to, nogil())
      .def("grow", &Slot::grow, nogil())
      .def("shrink", &Slot::shrink, nogil())
      .def("close", &Slot::close, py::arg("force"), nogil())
      .def("is_mapped", &Slot::is_mapped, nogil())
      .def("mapped_ranges", &Slot::mapped_ranges, nogil())
      .def("physical_pages", &Slot::physical_pages, nogil())
      .def("dlpack", &make_view, py::arg("byte_offset"), py::arg("nbytes"), py::arg("pinned"))
      .def(
          "load",
          [](std::shared_ptr<Slot> s, py::list sources, int threads, uint64_t chunk_bytes) {
            // sources: (path or None, buffer address, keepalive object, src_offset, slot_offset, nbytes
            //          [, cache fill address, pinned]) (loader.h Source); a path as bytes (os.fsencode: a name
            //          that is not UTF-8 does not cast from str) or str
            auto pj = std::make_unique<PyLoadJob>();
            std::vector<Source> v;
            for (py::handle h : sources) {
              py::tuple t = py::reinterpret_borrow<py::tuple>(h);
              Source src;
              if (!t[0].is_none()) src.path = t[0].cast<std::string>();
              src.ptr = t[1].cast<uint64_t>();
              pj->keep.append(t[2]);
              src.src_offset = t[3].cast<uint64_t>();
              src.slot_offset = t[4].cast<uint64_t>();
              src.nbytes = t[5].cast<uint64_t>();
              if (t.size() >= 8) {
                src.fill_ptr = t[6].cast<uint64_t>();
                src.pinned = t[7].cast<bool>();
              }
              v.push_back(std::move(src));
            }
            {
              py::gil_scoped_release nogil;
              pj->job = std::make_shared<LoadJob>(std::move(s), std::move(v), threads, chunk_bytes);
            }
            return pj;
          },
          py::arg("sources"), py::arg("threads"), py::arg("chunk_bytes"));

  py::class_<PyLoadJob>(m, "LoadJob")
      .def("wait_for",
           [](PyLoadJob& j, double t) {
             bool finished;
             {
               py::gil_scoped_release nogil;
               finished = j.job->wait_for(t);
             }
             if (finished) j.release_sources();
             return finished;
           })
      .def("result",
           [](PyLoadJob& j) {
             uint64_t n = 0;
             std::exception_ptr err;
             {
               py::gil_scoped_release nogil;
               try {
                 n = j.job->result();
               } catch (...) {
                 err = std::current_exception();
               }
             }
             j.release_sources();  // result() joined the job: finished, whatever it returns or raises
             if (err) std::rethrow_exception(err);
             return n;
           })
      .def("cancel", [](PyLoadJob& j) { py::gil_scoped_release nogil; j.job->cancel(); })
      .def_property_readonly("done_bytes", [](PyLoadJob& j) { return j.job->done_bytes(); })
      .def_property_readonly("total_bytes", [](PyLoadJob& j) { return j.job->total_bytes(); })
      .def_property_readonly("finished", [](PyLoadJob& j) {
        bool finished;
        {
          py::gil_scoped_release nogil;
          finished = j.job->state() != LoadJob::State::Running;
        }
        if (finished) j.release_sources();
        return finished;
      })
      // They take the job's mutex, which finish() holds under the pool mutex: the GIL is let go first, as above.
      .def_property_readonly("pages_mapped_by_job",
                             [](PyLoadJob& j) {
                               py::gil_scoped_release nogil;
                               return j.job->pages_mapped_by_job();
                             })
      .def_property_readonly("pages_kept_by_views", [](PyLoadJob& j) {
        py::gil_scoped_release nogil;
        return j.job->pages_kept_by_views();
      });
}
