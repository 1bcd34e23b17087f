// descend's plan check: the per-step, per-parameter part of a planned step, in C++.
//
// A planned step (descend/kernels/contract.py, class Plan; the conditions are its PLAN_CONDITIONS) re-uses the kernel's pointer array between steps. Each
// step it must still prove that the array describes the group: the same parameters with the same
// storage, the same state dicts holding the same state tensors and the same step count, and a
// gradient that is dense, contiguous and of the parameter's dtype; then it reads the new gradient
// pointers and advances every parameter's step count. Done in Python that is about 1-3 µs a parameter
// (0.2-0.6 ms a step on a 200-tensor model, 10-20% of a GD step).
//
// It is bound by memory latency, not work: right after a step's kernel has streamed the model through
// the caches, every TensorImpl, autograd meta, storage and dict here is a cache (and TLB) miss, and
// each parameter is a chain of dependent ones (impl -> autograd meta -> grad impl -> grad storage).
// So the tensor checks run on the OpenMP threads (each core misses in parallel) as a software
// pipeline that prefetches the next links for parameters further on; the dict checks, which call the
// Python C API, run on the calling thread (it holds the GIL; the workers touch no Python object
// beyond reading the group's list).
//
// Only torch's public c10 headers are used (TensorImpl), so this compiles in about a second. Every
// check either passes for all parameters or the function returns 0 having changed nothing, and the
// caller takes the generic path, which builds a new plan. Called through ctypes.PyDLL.

#include <Python.h>
#include <c10/core/TensorImpl.h>
#include <c10/core/UndefinedTensorImpl.h>

#include <omp.h>

#include <atomic>
#include <cstdint>

using c10::TensorImpl;

// Mirrors descend.kernels.cpu._PlanC (ctypes.Structure): every field is 8 bytes wide.
struct PlanC {
  int64_t n_all;          // len(group["params"])
  PyObject** members;     // [n_all] the group's parameters, in order
  TensorImpl** impls;     // [n_all] their TensorImpls (t._cdata)
  int64_t* slot;          // [n_all] its index among the planned parameters, -1 if not planned (no gradient)
  int64_t n;              // planned parameters
  void** p_data;          // [n] their data pointers
  int64_t* numel;         // [n]
  int64_t scalar_type;    // c10::ScalarType of every planned parameter and gradient
  PyObject** planned;     // [n] the planned parameters
  PyObject** states;      // [n] their state dicts
  int64_t* hashes;        // [n] hash(p): the key of the optimizer's state map
  int64_t n_bufs;         // state tensors per parameter
  PyObject** buf_names;   // [n_bufs]
  PyObject** bufs;        // [n_bufs * n] the state tensors, name-major
  TensorImpl** buf_impls; // [n_bufs * n]
  void** buf_data;        // [n_bufs * n]
  void** grads_out;       // [n] where the gradient pointers go (the kernel's pointer array)
  // the group's kernel (descend/kernels/codegen.py, kernel_source), called here once the plan holds
  void (*kernel)(int64_t n, const int64_t* sizes, void** ptrs, const double* scalars, int nthreads);
  int64_t* sizes;         // [n] its sizes
  void** ptrs;            // its pointer array (grads_out points into it)
  int64_t kernel_threads;
  uint64_t* tags;         // [n] each state dict's version tag after our last write (0: unknown)
  uint64_t map_tag;       // the state map's version tag when it was last verified (0: unknown)
};

namespace {

// at::Tensor is an intrusive_ptr<TensorImpl>, whose only member is the raw pointer
inline TensorImpl* impl_of(const at::Tensor& t) { return *reinterpret_cast<TensorImpl* const*>(&t); }

// The contract's conditions on one tensor (descend/kernels/contract.py, PLAN_CONDITIONS): no Python
// subclass behind it (checked first: such a tensor may answer the others from Python), strided, on the
// CPU, the planned dtype and number of elements, contiguous, no conjugate/negative bit.
inline bool same_dense(TensorImpl* t, int64_t st, int64_t numel) {
  return !t->key_set().has(c10::DispatchKey::Python) && t->layout() == c10::kStrided &&
         t->device_type() == c10::DeviceType::CPU && static_cast<int64_t>(t->dtype().toScalarType()) == st &&
         t->numel() == numel && t->is_contiguous() && !t->is_conj() && !t->is_neg();
}

// optimizer.state[p] without calling Tensor.__hash__ (a Python function) again: the hash is known
inline PyObject* state_of(PyObject* state_map, PyObject* p, int64_t hash) {
#if PY_VERSION_HEX < 0x030D0000
  return _PyDict_GetItem_KnownHash(state_map, p, static_cast<Py_hash_t>(hash));
#else
  (void)hash;
  return PyDict_GetItemWithError(state_map, p);
#endif
}

#ifndef DESCEND_PREFETCH_D
#define DESCEND_PREFETCH_D 4
#endif
constexpr int64_t D = DESCEND_PREFETCH_D;  // prefetch distance per pipeline stage, in parameters

inline void warm(const void* p, size_t bytes) {
  for (size_t k = 0; k < bytes; k += 64) __builtin_prefetch(static_cast<const char*>(p) + k);
}
inline const void* storage_of(TensorImpl* t) { return t->unsafe_storage().unsafeGetStorageImpl(); }

// stage `stage` of the pipeline for member i: 0 its TensorImpl, 1 its autograd meta and storage (and
// its state tensors' impls), 2 its gradient's impl (and the state tensors' storages), 3 the
// gradient's storage
void warm_member(const PlanC* pl, int64_t i, int64_t hi, int stage, TensorImpl* undefined) {
  if (i >= hi) return;
  TensorImpl* p = pl->impls[i];
  int64_t j = pl->slot[i];
  if (stage == 0) {
    warm(p, sizeof(TensorImpl));
  } else if (stage == 1) {
    if (auto* meta = p->autograd_meta()) warm(meta, 128);
    if (j >= 0) {
      warm(storage_of(p), 64);
      for (int64_t b = 0; b < pl->n_bufs; b++) warm(pl->buf_impls[b * pl->n + j], sizeof(TensorImpl));
    }
  } else {
    TensorImpl* g = impl_of(p->grad());
    if (stage == 2) {
      if (g != undefined) warm(g, sizeof(TensorImpl));
      if (j >= 0)
        for (int64_t b = 0; b < pl->n_bufs; b++) warm(storage_of(pl->buf_impls[b * pl->n + j]), 64);
    } else if (g != undefined) {
      warm(storage_of(g), 64);
    }
  }
}

// the tensor checks of member i; writes its gradient pointer into the kernel's array
bool check_member(const PlanC* pl, PyObject* group_params, int64_t i, TensorImpl* undefined) {
  if (PyList_GET_ITEM(group_params, i) != pl->members[i]) return false;
  TensorImpl* p = pl->impls[i];
  TensorImpl* g = impl_of(p->grad());
  int64_t j = pl->slot[i];
  if ((g != undefined) != (j >= 0)) return false;
  if (j < 0) return true;
  int64_t numel = pl->numel[j];
  if (!same_dense(p, pl->scalar_type, numel) || p->data() != pl->p_data[j] ||
      !same_dense(g, pl->scalar_type, numel))
    return false;
  for (int64_t b = 0; b < pl->n_bufs; b++) {
    int64_t at = b * pl->n + j;
    TensorImpl* t = pl->buf_impls[at];
    if (!same_dense(t, pl->scalar_type, numel) || t->data() != pl->buf_data[at]) return false;
  }
  pl->grads_out[j] = const_cast<void*>(g->data());  // the kernel's array: harmless if we fail later
  return true;
}

bool check_tensors(const PlanC* pl, PyObject* group_params, int nthreads) {
  TensorImpl* undefined = c10::UndefinedTensorImpl::singleton();
  std::atomic<bool> ok{true};
  int64_t n_all = pl->n_all;
#pragma omp parallel num_threads(nthreads)
  {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int64_t lo = n_all * id / nt, hi = n_all * (id + 1) / nt;
    try {
      for (int stage = 0; stage < 4; stage++)  // fill the pipeline
        for (int64_t i = lo; i < lo + 4 * D; i++) warm_member(pl, i, hi, stage, undefined);
      for (int64_t i = lo; i < hi && ok.load(std::memory_order_relaxed); i++) {
        for (int stage = 0; stage < 4; stage++) warm_member(pl, i + (4 - stage) * D, hi, stage, undefined);
        if (!check_member(pl, group_params, i, undefined)) ok.store(false, std::memory_order_relaxed);
      }
    } catch (...) {  // a torch accessor threw (a tensor without storage, ...): not plannable
      ok.store(false, std::memory_order_relaxed);
    }
  }
  return ok.load();
}

// CPython gives every dict a version tag that changes with each modification (a global counter, so
// no two states share one). A state dict whose tag is still the one it had right after our last
// write holds what we wrote and checked then, and an unchanged state map still maps each parameter
// to its dict: then the dict lookups below can be skipped. (The tag is deprecated from Python 3.12
// and may go; without it every lookup is done.)
#if PY_VERSION_HEX < 0x030E0000
inline uint64_t tag_of(PyObject* d) { return reinterpret_cast<PyDictObject*>(d)->ma_version_tag; }
#else
inline uint64_t tag_of(PyObject*) { return 0; }
#endif

// the dict checks, on the calling thread: optimizer.state[p] is the plan's dict, which holds the
// plan's state tensors and the step count (and plain-number state) the plan expects
bool check_states(const PlanC* pl, PyObject* state_map, PyObject* keys, PyObject* old_vals) {
  Py_ssize_t nk = PyTuple_GET_SIZE(keys);
  bool map_same = pl->map_tag != 0 && tag_of(state_map) == pl->map_tag;
  for (int64_t j = 0; j < pl->n; j++) {
    if (j + D < pl->n) warm(pl->states[j + D], sizeof(PyDictObject));
    PyObject* st = pl->states[j];
    if (map_same && pl->tags[j] != 0 && tag_of(st) == pl->tags[j]) continue;  // untouched since our write
    if (state_of(state_map, pl->planned[j], pl->hashes[j]) != st) return false;
    for (Py_ssize_t k = 0; k < nk; k++) {
      PyObject* v = PyDict_GetItemWithError(st, PyTuple_GET_ITEM(keys, k));
      PyObject* want = PyTuple_GET_ITEM(old_vals, k);
      if (v == nullptr || (v != want && PyObject_RichCompareBool(v, want, Py_EQ) != 1)) return false;
    }
    for (int64_t b = 0; b < pl->n_bufs; b++)
      if (PyDict_GetItemWithError(st, pl->buf_names[b]) != pl->bufs[b * pl->n + j]) return false;
  }
  return true;
}

}  // namespace

// 1: the plan held and the step is taken: every state's step count (and plain-number state) is now
// `new_vals`, and the kernel has run with `scalars`. 0: it does not hold, and nothing was changed.
extern "C" int descend_plan_step(PlanC* pl, PyObject* group_params, PyObject* state_map,
                                 PyObject* keys, PyObject* old_vals, PyObject* new_vals, int nthreads,
                                 const double* scalars) {
  if (!PyList_CheckExact(group_params) || PyList_GET_SIZE(group_params) != pl->n_all ||
      !PyDict_Check(state_map) || !PyTuple_CheckExact(keys) || !PyTuple_CheckExact(old_vals) ||
      !PyTuple_CheckExact(new_vals) || PyTuple_GET_SIZE(old_vals) != PyTuple_GET_SIZE(keys) ||
      PyTuple_GET_SIZE(new_vals) != PyTuple_GET_SIZE(keys))
    return 0;
  if (!check_tensors(pl, group_params, nthreads < 1 ? 1 : nthreads)) return 0;
  if (!check_states(pl, state_map, keys, old_vals)) {
    PyErr_Clear();
    return 0;
  }
  Py_ssize_t nk = PyTuple_GET_SIZE(keys);
  for (int64_t j = 0; j < pl->n; j++) {
    if (j + D < pl->n) warm(reinterpret_cast<PyDictObject*>(pl->states[j + D])->ma_keys, 128);
    for (Py_ssize_t k = 0; k < nk; k++)
      if (PyDict_SetItem(pl->states[j], PyTuple_GET_ITEM(keys, k), PyTuple_GET_ITEM(new_vals, k)) != 0)
        return -1;  // out of memory while writing: the Python error propagates
    pl->tags[j] = tag_of(pl->states[j]);
  }
  pl->map_tag = tag_of(state_map);
  Py_BEGIN_ALLOW_THREADS  // the kernel touches no Python object: other threads may run meanwhile
  pl->kernel(pl->n, pl->sizes, pl->ptrs, scalars, static_cast<int>(pl->kernel_threads));
  Py_END_ALLOW_THREADS
  return 1;
}

// The c10::ScalarType of a tensor (by its TensorImpl), for building a plan.
extern "C" int64_t descend_scalar_type(TensorImpl* t) { return static_cast<int64_t>(t->dtype().toScalarType()); }
