// descend's plan check: the per-step, per-parameter part of a planned step, in C++.
//
// A planned step (descend/fast.py, class Plan) re-uses the kernel's pointer array between steps. Each
// step it must still prove that the array describes the group: the same parameters with the same
// storage, the same state dicts holding the same state tensors and the same step count, and a
// gradient that is dense, contiguous and of the parameter's dtype; then it reads the 200 new gradient
// pointers and advances every parameter's step count. Done in Python that is about 1-3 µs a parameter
// (0.2-0.6 ms a step on a 200-tensor model, 10-20% of a GD step); here it is a few ns a parameter.
//
// Only torch's public c10 headers are used (TensorImpl), so this compiles in about a second. Every
// check either passes for all parameters or the function returns 0 having changed nothing, and the
// caller takes the generic path, which builds a new plan. Called through ctypes.PyDLL: the GIL is held.

#include <Python.h>
#include <c10/core/TensorImpl.h>
#include <c10/core/UndefinedTensorImpl.h>

#include <cstdint>

using c10::TensorImpl;

// Mirrors fast._PlanC (ctypes.Structure): every field is 8 bytes wide.
struct PlanC {
  int64_t n_all;          // len(group["params"])
  PyObject** members;     // [n_all] the group's parameters, in order
  TensorImpl** impls;     // [n_all] their TensorImpls (t._cdata)
  int64_t* has_grad;      // [n_all] 1 if the parameter is in the plan (it had a gradient)
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
};

namespace {

// at::Tensor is an intrusive_ptr<TensorImpl>, whose only member is the raw pointer
inline TensorImpl* impl_of(const at::Tensor& t) { return *reinterpret_cast<TensorImpl* const*>(&t); }

inline bool same_dense(TensorImpl* t, int64_t st, int64_t numel) {
  return t->layout() == c10::kStrided && t->device_type() == c10::DeviceType::CPU &&
         static_cast<int64_t>(t->dtype().toScalarType()) == st && t->numel() == numel && t->is_contiguous();
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

int check(const PlanC* pl, PyObject* group_params, PyObject* state_map, PyObject* keys, PyObject* old_vals) {
  if (!PyList_CheckExact(group_params) || PyList_GET_SIZE(group_params) != pl->n_all) return 0;
  TensorImpl* undefined = c10::UndefinedTensorImpl::singleton();
  int64_t j = 0;
  for (int64_t i = 0; i < pl->n_all; i++) {
    if (PyList_GET_ITEM(group_params, i) != pl->members[i]) return 0;
    TensorImpl* p = pl->impls[i];
    TensorImpl* g = impl_of(p->grad());
    if ((g != undefined) != (pl->has_grad[i] != 0)) return 0;
    if (g == undefined) continue;
    if (!same_dense(p, pl->scalar_type, pl->numel[j]) || p->data() != pl->p_data[j] ||
        !same_dense(g, pl->scalar_type, pl->numel[j]))
      return 0;
    pl->grads_out[j] = const_cast<void*>(g->data());  // the kernel's array: harmless if we fail later
    j++;
  }
  Py_ssize_t nk = PyTuple_GET_SIZE(keys);
  for (j = 0; j < pl->n; j++) {
    PyObject* st = pl->states[j];
    if (state_of(state_map, pl->planned[j], pl->hashes[j]) != st) { PyErr_Clear(); return 0; }
    for (Py_ssize_t k = 0; k < nk; k++) {
      PyObject* v = PyDict_GetItemWithError(st, PyTuple_GET_ITEM(keys, k));
      if (v == nullptr) { PyErr_Clear(); return 0; }
      int eq = PyObject_RichCompareBool(v, PyTuple_GET_ITEM(old_vals, k), Py_EQ);
      if (eq != 1) { PyErr_Clear(); return 0; }
    }
    for (int64_t b = 0; b < pl->n_bufs; b++) {
      int64_t at = b * pl->n + j;
      PyObject* t = PyDict_GetItemWithError(st, pl->buf_names[b]);
      if (t != pl->bufs[at]) { PyErr_Clear(); return 0; }
      TensorImpl* ti = pl->buf_impls[at];
      if (!same_dense(ti, pl->scalar_type, pl->numel[j]) || ti->data() != pl->buf_data[at]) return 0;
    }
  }
  return 1;
}

}  // namespace

// 1: the plan holds; every state's step count (and plain-number state) is now `new_vals` and the
// gradient pointers are in the kernel's array. 0: it does not hold, and no state was changed.
extern "C" int descend_plan_step(const PlanC* pl, PyObject* group_params, PyObject* state_map,
                                 PyObject* keys, PyObject* old_vals, PyObject* new_vals) {
  try {
    if (!PyDict_Check(state_map) || !PyTuple_CheckExact(keys) || !PyTuple_CheckExact(old_vals) ||
        !PyTuple_CheckExact(new_vals) || PyTuple_GET_SIZE(old_vals) != PyTuple_GET_SIZE(keys) ||
        PyTuple_GET_SIZE(new_vals) != PyTuple_GET_SIZE(keys))
      return 0;
    if (!check(pl, group_params, state_map, keys, old_vals)) return 0;
  } catch (...) {  // a torch accessor threw (a tensor without storage, ...): not plannable
    PyErr_Clear();
    return 0;
  }
  Py_ssize_t nk = PyTuple_GET_SIZE(keys);
  for (int64_t j = 0; j < pl->n; j++)
    for (Py_ssize_t k = 0; k < nk; k++)
      if (PyDict_SetItem(pl->states[j], PyTuple_GET_ITEM(keys, k), PyTuple_GET_ITEM(new_vals, k)) != 0)
        return -1;  // out of memory while writing: the Python error propagates
  return 1;
}

// The c10::ScalarType of a tensor (by its TensorImpl), for building a plan.
extern "C" int64_t descend_scalar_type(TensorImpl* t) { return static_cast<int64_t>(t->dtype().toScalarType()); }
