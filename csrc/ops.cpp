// arkern._C: the compiled kernels.
//
// Operator schemas are defined once, in Python (arkern/ops/<family>.py, torch.library), so the
// namespace exists even when this extension is not built. Each csrc/cpu/<family>.cpp only provides
// TORCH_LIBRARY_IMPL(arkern, CPU, m) registrations for the schemas of its family. This file makes the
// shared object importable as a Python module; arkern loads it with torch.ops.load_library, and it
// registers the autograd-side kernels of the ops that write their arguments in place.
#include <Python.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

static struct PyModuleDef arkern_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&arkern_c_module); }

namespace {

// The ops whose schemas write arguments (Tensor(a!)) and that have no derivative.
const char* const kMutatingOps[] = {"causal_conv1d_update", "wavenet_generate", "pixelcnn_generate",
                                    "pixelcnnpp_generate"};

// Calls f(tensor, argument name) for every tensor argument the schema marks as written.
template <typename F>
void for_each_written(const c10::OperatorHandle& op, const torch::jit::Stack& stack, F f) {
  const auto& args = op.schema().arguments();
  const size_t first = stack.size() - args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* alias = args[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const c10::IValue& v = stack[first + i];
    if (v.isTensor()) {
      f(v.toTensor(), args[i].name());
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) f(t, args[i].name());
    }
  }
}

// Autograd: torch's in-place rules (no leaf that requires grad, no view of one: check_inplace), and, as
// these ops have no derivative, no written tensor that requires grad at all (its graph would silently
// stop describing its values). Then on to ADInplaceOrView.
void check_written_then_redispatch(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  for_each_written(op, *stack, [&](const at::Tensor& t, const std::string& name) {
    if (!(at::GradMode::is_enabled() && t.requires_grad())) return;
    TORCH_CHECK(!t.is_leaf(), op.schema().name(), ": ", name, " is a leaf Variable that requires grad and is being "
                "used in an in-place operation.");
    torch::autograd::check_inplace(t, true);  // a view of such a leaf: torch's own message
    TORCH_CHECK(false, op.schema().name(), " writes its argument ", name, " in place and has no derivative, but it "
                "requires grad (detach() it or use torch.no_grad())");
  });
  at::AutoDispatchBelowAutograd guard;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// ADInplaceOrView: bump the version counter of every written argument, then run the kernel. A backward
// that saved such a tensor then fails ("modified by an inplace operation") instead of silently using the
// new values, and an inference tensor is refused outside inference mode -- as for torch's own in-place
// ops. (torch's generic fallback bumps only written tensors that are also returned.)
void bump_written_then_redispatch(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  for_each_written(op, *stack, [](const at::Tensor& t, const std::string&) {
    torch::autograd::impl::bump_version(t);
  });
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

}  // namespace

// Both keys sit above CPU/CUDA: every device's kernel gets the same checks.
TORCH_LIBRARY_IMPL(arkern, Autograd, m) {
  for (const char* op : kMutatingOps)
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&check_written_then_redispatch>());
}

TORCH_LIBRARY_IMPL(arkern, ADInplaceOrView, m) {
  for (const char* op : kMutatingOps)
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&bump_written_then_redispatch>());
}
