"""`recc build`: one readable, standalone Python module per spec.

Stage: backend (triton) + runtime glue. The module runs with torch and
triton alone (`import recc` may fail where it runs). It holds, in this order:

  - the spec (docstring) and, where the spec has them, the generated Triton
    kernels (forward and backward, with comments pointing to spec lines);
  - the runtime, copied: `recc/binding.py` (the call checks, raising the
    module's own `RecError`) and `backends/triton/runtime.py` (the launcher,
    the autograd Function's forward and backward, the time loop), the same
    code recc runs;
  - the spec and its plan as data: `SIGNATURE` (inputs, params, states,
    outputs, dims read as values), `FINITE_STATES`, `PLAN` (what the launcher
    needs of the kernels; `recc.backends.triton.launch.plan_data`) and
    `ARGUMENTS` (the Function's arguments);
  - the plain-torch path, printed from the spec (`backends/torch/printer.py`):
    one step as the interpreter runs it, looped over time by the runtime;
  - a `torch.autograd.Function` for the kernels, and a wrapper named after
    the recurrence: `backend="auto"` runs the kernels on CUDA tensors and the
    torch loop elsewhere; "triton" and "torch" choose.

A spec without Triton kernels (a class they do not cover) gets the module
without them: the torch loop only (`build_module(..., kernels=False)`).

Spec names are not always Python names (`lambda`, `None`, `initial_state`,
`torch`), so every identifier the glue defines comes from the kernels'
module namespace (`names.py`), and the wrapper takes the tensors by keyword
(`**tensors`), exactly as `recc.compile(...)` does.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

from recc import binding
from recc.backends.names import Namespace, docstring_text
from recc.backends.torch.printer import MODULE_NAMES as PRINTED_NAMES
from recc.backends.torch.printer import print_last_step, print_step
from recc.backends.triton import runtime
from recc.backends.triton.launch import plan_data
from recc.backends.triton.scan_codegen import (
    MODULE_NAMES,
    Unsupported,
    generate_scan_module,
    kernel_spec,
)
from recc.backends.triton.wrap import wrap_source
from recc.ir import ties
from recc.lowering import LoweringPlan
from recc.signature import signature_of

# The files `recc build` copies into every module, in order.
RUNTIME_FILES = (Path(ties.__file__), Path(binding.__file__), Path(runtime.__file__))
_SHOWN = {  # where each copied file lives in recc's source tree
    "ties.py": "recc/ir/ties.py",
    "binding.py": "recc/binding.py",
    "runtime.py": "backends/triton/runtime.py",
}
# What the glue defines at module level, beside the kernels' and the runtime's names.
_GLUE = ("SPEC", "SIGNATURE", "FINITE_STATES", "PLAN", "NO_KERNELS", "ARGUMENTS", "__all__")


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) + "Scan"


def runtime_source() -> tuple[str, tuple[str, ...]]:
    """The runtime files' code, less their docstrings, and the names they define."""
    parts, names = [], []
    for path in RUNTIME_FILES:
        text = path.read_text()
        tree = ast.parse(text)
        body = tree.body
        start = 0
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            start = body[0].end_lineno
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, ast.Assign):
                names += [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.append(node.target.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                    raise AssertionError(f"{path.name}: a copied file has no __future__ import")
                names += [(a.asname or a.name).split(".")[0] for a in node.names]
        code = "\n".join(text.splitlines()[start:]).strip("\n")
        where = _SHOWN.get(path.name, path.name)
        parts.append(f"# ---- runtime: {where}, copied by `recc build` ----\n\n{code}")
    return "\n\n\n".join(parts), tuple(dict.fromkeys(names))


def _literal(value, indent: str = "") -> str:
    """Plain data as Python source: dicts one item per line, short tuples on one line."""
    inner = indent + "    "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_literal(k)}: {_literal(v, inner)}," for k, v in value.items()]
        return "{\n" + "\n".join(items) + f"\n{indent}}}"
    if isinstance(value, (tuple, list, frozenset)):
        items = [
            _literal(v, inner) for v in (sorted(value) if isinstance(value, frozenset) else value)
        ]
        flat = ", ".join(items) + ("," if len(items) == 1 and isinstance(value, tuple) else "")
        text = f"({flat})" if not isinstance(value, frozenset) else f"frozenset({{{flat}}})"
        if len(text) <= 80 and "\n" not in text:
            return text if items or not isinstance(value, frozenset) else "frozenset()"
        lines = "\n".join(f"{inner}{i}," for i in items)
        body = f"(\n{lines}\n{indent})"
        return body if not isinstance(value, frozenset) else f"frozenset({{\n{lines}\n{indent}}})"
    if isinstance(value, float):
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else '-float("inf")'
        return repr(value)
    if isinstance(value, str) and value.isprintable() and not set(value) & {'"', "\\"}:
        return f'"{value}"'
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    raise TypeError(f"not plain data: {value!r}")  # pragma: no cover


def build_module(lowering: LoweringPlan, kernels: bool = True) -> str:
    """The module's source. With `kernels`, the Triton kernels (Unsupported if the spec
    has none); without, the torch loop only."""
    spec, analysis = lowering.spec, lowering.analysis
    runtime_code, runtime_names = runtime_source()
    if kernels:
        if lowering.scan is None:
            raise Unsupported(f"the {analysis.kind} class has no scan kernel")
        # the kernels compute `rec`: the spec less the states nothing reads, whose finals
        # the wrapper takes from their updates at the last step (see kernel_spec)
        computed = kernel_spec(lowering.scan)
        rec, unread = computed.spec, lowering.scan.unread
        kernel_source, plan = generate_scan_module(computed)
        module = plan.names.parent
        assert module is not None
        kernel_code = kernel_source[kernel_source.index("import triton\n") :].rstrip()
        no_kernels = None
    else:
        rec, unread, plan = spec, (), None
        module = Namespace(MODULE_NAMES)
        kernel_code = ""
        try:
            if lowering.scan is None:
                raise Unsupported(f"the {analysis.kind} class has no scan kernel")
            generate_scan_module(kernel_spec(lowering.scan))
            no_kernels = "built without them"
        except Unsupported as err:
            no_kernels = str(err)
    for name in runtime_names:
        assert not module.taken(name) or name in PRINTED_NAMES, name
        assert module.name(("runtime", name), name) == name, name
    for name in _GLUE:
        assert module.name(("glue", name), name) == name, name
    step_fn = module.name(("glue", "step"), "_step")
    last_fn = module.name(("glue", "last_step"), "_last_step") if unread else None
    program = module.name(("glue", "program"), "_PROGRAM")
    bind_leaves = module.name(("glue", "bind_leaves"), "_bind_leaves")
    cls = module.name(("glue", "class"), _class_name(spec.name))
    wrapper = module.name(("glue", "wrapper"), spec.name)

    signature = signature_of(spec)
    finite = lowering.finite_states
    leaf_keys = [
        *(("input", i.name) for i in spec.inputs),
        *(("param", p.name) for p in spec.params),
        *(("state", s.name) for s in rec.states),
    ]
    class_label = analysis.kind + (f" ({analysis.semiring})" if analysis.semiring else "")
    header = [
        f'"""`{docstring_text(spec.name)}` ({docstring_text(spec.filename)}), built by '
        "`recc build`: it runs with torch and triton alone.",
        "",
        f"Class: {class_label}."
        + (
            f" Triton kernels: tile axes (time, {', '.join(plan.layout.dims)}); programs "
            f"split dim {plan.blocked}."
            if plan is not None
            else f" No Triton kernels ({docstring_text(str(no_kernels))})."
        ),
        f"Call `{docstring_text(wrapper)}(**tensors, initial_state=None, output_final_state=False,",
        '    check_nan=True, backend="auto")`:',
        *(
            [
                '"auto" runs the Triton kernels on CUDA tensors and the torch path elsewhere;',
                '"triton" (CPU tensors only under TRITON_INTERPRET=1) and "torch" choose.',
            ]
            if plan is not None
            else ['"auto" and "torch" run the torch path on any device ("triton": a RecError).']
        ),
        "The torch path is a sequential loop over time (the step printed below, as recc's",
        "interpreter runs it): correct and differentiable by torch autograd, not fast.",
        "The computation runs in fp64 if any tensor is fp64, else in fp32. The spec:",
        "",
        *[f"    {line}" for line in docstring_text(spec.source.strip()).splitlines()],
        '"""',
    ]
    lines = [*header, ""]
    if kernel_code:
        lines += [kernel_code, "", ""]
    lines += [
        runtime_code,
        "",
        "",
        "# ---- the spec and its plan, as data (generated by `recc build`) ----",
        "",
        f'SPEC = """{docstring_text(spec.source)}"""',
        "# What a call binds: names and dims of inputs, params, states (with their start), outputs",
        f"SIGNATURE = {_literal(signature)}",
        "# States whose start must be finite (a linear recurrence reads them)",
        f"FINITE_STATES = {_literal(finite)}",
    ]
    if plan is not None:
        lines += [
            "# What the launcher needs of the kernels above (see the runtime's Launcher)",
            f"PLAN = {_literal(plan_data(plan, unread))}",
            "NO_KERNELS = None",
        ]
    else:
        lines += ["PLAN = None", f"NO_KERNELS = {no_kernels!r}"]
    lines += [
        "# The Function's arguments in order: (kind, spec name).",
        f"ARGUMENTS = {_literal(tuple(leaf_keys))}",
        "",
        "",
        "# ---- the plain-torch path: one step, printed from the spec ----",
        "",
        "",
        *print_step(spec, module, step_fn),
    ]
    if last_fn is not None:
        lines += ["", "", *print_last_step(spec, unread, module, last_fn)]
    lines += ["", "", "# ---- autograd Function and entry point (generated by `recc build`) ----"]
    if plan is not None:
        lines += _function_lines(spec, rec, plan, module, leaf_keys, cls, program, bind_leaves)
    lines += _wrapper_lines(spec, rec, plan, wrapper, cls, step_fn, last_fn, unread)
    exported = [wrapper] + ([cls] if plan is not None else [])
    lines += ["", "", f"__all__ = [{', '.join(_literal(n) for n in exported)}]", ""]
    return wrap_source("\n".join(lines))


def _tuple(items: list[str]) -> str:
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _function_lines(spec, rec, plan, module, leaf_keys, cls, program, bind_leaves) -> list[str]:
    # the Function's arguments: one local scope for forward and backward
    local = module.child()
    local.name(("ctx",), "ctx")
    args = [
        local.name(("leaf", kind, n), f"{n}_init" if kind == "state" else n)
        for kind, n in leaf_keys
    ]
    d_outs = [local.name(("dout", o.name), f"d_{o.name}") for o in rec.outputs]
    d_finals = [local.name(("dfinal", s.name), f"d_{s.name}_final") for s in rec.states]
    leaves = local.name(("local", "leaves"), "leaves")
    names = tuple(n for _, n in leaf_keys)
    n_tensors = sum(kind != "state" for kind, _ in leaf_keys)
    inner = module.child()
    tensors_, init_ = inner.name(("t",), "tensors"), inner.name(("i",), "initial_state")
    return [
        "",
        "",
        f"def {bind_leaves}({tensors_}, {init_}):",
        "    # the Function's leaves were checked by the wrapper: no NaN check here",
        f"    return bind(SIGNATURE, {tensors_}, {init_}, check_nan=False)",
        "",
        "",
        f"{program} = Program(Launcher(PLAN, globals()), {bind_leaves})",
        "",
        "",
        f"class {cls}(torch.autograd.Function):",
        f'    """{docstring_text(spec.name)} on the kernels above: {plan.forward}, then '
        f'{plan.backward}."""',
        "",
        "    @staticmethod",
        f"    def forward(ctx, {', '.join(args)}):",
        f"        {leaves} = {_tuple(args)}",
        f"        return scan_forward(ctx, {program}, {_literal(names)}, {n_tensors}, {leaves}, "
        "first=0)",
        "",
        "    @staticmethod",
        f"    def backward(ctx, {', '.join([*d_outs, *d_finals])}):",
        f"        return scan_backward(ctx, {_tuple([*d_outs, *d_finals])})",
    ]


def _wrapper_lines(spec, rec, plan, wrapper, cls, step_fn, last_fn, unread) -> list[str]:
    lines = [
        "",
        "",
        f"def {wrapper}(",
        '    *, initial_state=None, output_final_state=False, check_nan=True, backend="auto", '
        "**tensors",
        "):",
        f'    """Run `{docstring_text(spec.name)}` on tensors passed by name: inputs '
        f"{', '.join(i.name for i in spec.inputs)} as [B, T, (H), ...]",
        f"    and params {', '.join(p.name for p in spec.params) or '(none)'} as declared; "
        "initial states [B, (H), ...].",
        (
            '    backend="auto": the Triton kernels on CUDA tensors, the torch loop elsewhere;'
            if plan is not None
            else '    backend="auto" or "torch": the torch loop (the module has no Triton kernels);'
        ),
        '    "triton" or "torch" to choose. Returns the output(s), and the final state(s)'
        if plan is not None
        else "    Returns the output(s), and the final state(s)",
        "    if asked. A call that does not fit raises RecError, saying how to fix it.",
        '    """',
        "    check_flags(RecError, output_final_state=output_final_state, check_nan=check_nan)",
        "    bound = bind(SIGNATURE, tensors, initial_state, check_nan, FINITE_STATES)",
    ]
    if plan is None:
        return lines + [
            "    choose_backend(backend, bound.device, NO_KERNELS, RecError)  # torch: no kernels",
            f"    outputs, finals = run_steps({step_fn}, SIGNATURE, bound)",
            "    return results(SIGNATURE, outputs, finals, output_final_state)",
        ]
    lines += [
        '    if choose_backend(backend, bound.device, NO_KERNELS, RecError) == "torch":',
        f"        outputs, finals = run_steps({step_fn}, SIGNATURE, bound)",
    ]
    lines += [
        "    else:",
        "        given = initial_states(SIGNATURE, initial_state)",
        "        leaves = [",
        '            tensors[name] if kind != "state" else given.get(name, '
        "bound.initial_state[name])",
        "            for kind, name in ARGUMENTS",
        "        ]",
        f"        outputs, finals = split_results(PLAN, {cls}.apply(*leaves))",
    ]
    if unread:
        lines += [
            "        # read by no step: the final is the update at the last step, as the "
            "loop has it",
            f"        finals.update(last_step({last_fn}, {_literal(tuple(unread))}, "
            "SIGNATURE, bound))",
        ]
    lines.append("    return results(SIGNATURE, outputs, finals, output_final_state)")
    return lines


__all__ = ["Namespace", "build_module", "runtime_source"]
