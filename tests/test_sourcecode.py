"""The source tree checked as part of the suite: ruff over src, tests, bench and examples; mypy
over the type stubs and the examples; and one declaration of the API, in the sense that the
type stubs (_core.pyi, _server.pyi), the signatures compiled into the extension (setup.py
builds with embedsignature) and the API reference (docs/api.md, generated from those compiled
signatures) must agree: a parameter added to Engine.listen and not to the stub fails here.
The README's links to the docs must resolve too.

ruff and mypy come with the test extra (`pip install ".[test]"`); where they are missing the
lint tests skip, saying so. The tree checks need the source checkout (not an sdist's tests
alone): they skip when docs/ or the stubs are not beside them."""
import ast
import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

import iocpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(os.path.abspath(iocpx.__file__))
STUBS = {"_core": os.path.join(PKG, "_core.pyi"), "_server": os.path.join(PKG, "_server.pyi")}
DOCS = os.path.join(ROOT, "docs")


def needs(path):
    return pytest.mark.skipif(not os.path.exists(path), reason=f"needs {path} (a source checkout)")


def tool(module):
    try:
        importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not installed (it comes with pip install \".[test]\")")


# ---- lint ----

@needs(os.path.join(ROOT, "pyproject.toml"))
def test_ruff_finds_nothing():
    tool("ruff")
    dirs = [d for d in ("src", "tests", "bench", "examples") if os.path.isdir(os.path.join(ROOT, d))]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache"] + dirs,
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@needs(os.path.join(ROOT, "examples"))
def test_mypy_checks_the_stubs_and_the_examples(tmp_path):
    tool("mypy")
    # The package's Python and stubs are checked from a copy: given as files inside
    # site-packages (an installed iocpx), mypy would take site-packages for a source root
    # and refuse the modules there that shadow its own (typing_extensions).
    copy = tmp_path / "iocpx"
    copy.mkdir()
    stubs = []
    for f in sorted(os.listdir(PKG)):
        if f.endswith((".py", ".pyi")) or f == "py.typed":
            with open(os.path.join(PKG, f), "rb") as src:
                (copy / f).write_bytes(src.read())
            if f.endswith(".pyi"):
                stubs.append(str(copy / f))
    env = dict(os.environ, MYPYPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--config-file",
                        os.path.join(ROOT, "pyproject.toml")] + stubs + ["examples"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- one declaration of the API ----

def stub_tree(name):
    if not os.path.exists(STUBS[name]):
        pytest.skip(f"no stub {STUBS[name]}")
    with open(STUBS[name]) as f:
        return ast.parse(f.read())


def stub_params(fn):
    """[(name, kind, default source or None)] of a stub's def."""
    a = fn.args
    out = []
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    for p, d in zip(pos, defaults):
        out.append((p.arg, "positional", d))
    if a.vararg:
        out.append((a.vararg.arg, "*", None))
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((p.arg, "keyword", d))
    if a.kwarg:
        out.append((a.kwarg.arg, "**", None))
    return out


KIND = {inspect.Parameter.POSITIONAL_ONLY: "positional",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
        inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.KEYWORD_ONLY: "keyword",
        inspect.Parameter.VAR_KEYWORD: "**"}


def compiled_signature(obj, name):
    """The signature the extension carries: inspect.signature, or, for a class, the first line
    of its docstring ("Engine(workers=None, backend=None)", as embedsignature writes it)."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        pass
    first = (obj.__doc__ or "").splitlines()[0] if obj.__doc__ else ""
    m = re.match(rf"^{re.escape(name)}(\(.*\))", first)
    assert m, f"{name}: no signature in its docstring ({first!r})"
    fn = ast.parse(f"def f{m.group(1)}: pass").body[0]
    params = []
    for pname, kind, d in stub_params(fn):
        kinds = {"positional": inspect.Parameter.POSITIONAL_OR_KEYWORD,
                 "*": inspect.Parameter.VAR_POSITIONAL, "keyword": inspect.Parameter.KEYWORD_ONLY,
                 "**": inspect.Parameter.VAR_KEYWORD}
        params.append(inspect.Parameter(pname, kinds[kind], default=inspect.Parameter.empty
                                        if d is None else eval(ast.unparse(d), {})))
    return inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
                             + params)


def compare(where, stub_fn, sig, self_arg):
    stub = stub_params(stub_fn)
    real = [(p.name, KIND[p.kind], p.default) for p in sig.parameters.values()]
    if self_arg and real and real[0][0] == "self":
        real = real[1:]
    if self_arg and stub and stub[0][0] == "self":
        stub = stub[1:]
    assert [(n, k) for n, k, _ in stub] == [(n, k) for n, k, _ in real], (
        f"{where}: the stub declares {[n for n, _, _ in stub]}, the compiled signature is "
        f"{[n for n, _, _ in real]} (kinds: stub {[k for _, k, _ in stub]}, compiled "
        f"{[k for _, k, _ in real]})")
    for (n, _, d), (_, _, rd) in zip(stub, real):
        if d is None:
            assert rd is inspect.Parameter.empty, f"{where}: {n} has a default, the stub none"
        else:
            assert rd is not inspect.Parameter.empty, (
                f"{where}: {n} is required, the stub says {ast.unparse(d)}")
            assert eval(ast.unparse(d), {}) == rd, (
                f"{where}: default of {n}: stub {ast.unparse(d)}, compiled {rd!r}")


def public_members(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


@pytest.mark.parametrize("module", ["_core", "_server"])
def test_stubs_declare_the_compiled_signatures(module):
    """Every class and function of the stub has the compiled object's parameters (names,
    kinds, defaults), and every public member of a compiled class is declared in the stub."""
    mod = importlib.import_module(f"iocpx.{module}")
    tree = stub_tree(module)
    seen = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            compare(f"{module}.{node.name}", node, inspect.signature(getattr(mod, node.name)),
                    False)
            seen.add(node.name)
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(mod, node.name)
        seen.add(node.name)
        declared = set()
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                declared.add(item.name)
                if item.name == "__init__":
                    compare(f"{node.name}()", item, compiled_signature(cls, node.name), True)
                elif not item.name.startswith("_") and not any(
                        isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list):
                    compare(f"{node.name}.{item.name}", item,
                            compiled_signature(getattr(cls, item.name),
                                               f"{node.name}.{item.name}"), True)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                declared.add(item.target.id)
        if not issubclass(cls, BaseException):
            missing = public_members(cls) - declared
            extra = {n for n in declared if not n.startswith("_")} - public_members(cls)
            assert not missing, f"{node.name}: not in the stub: {sorted(missing)}"
            assert not extra, f"{node.name}: in the stub, not in the code: {sorted(extra)}"
    exported = {n for n in iocpx.__all__ if getattr(getattr(iocpx, n), "__module__", "")
                == f"iocpx.{module}"}
    assert exported <= seen, f"exported by iocpx, not in the stub: {sorted(exported - seen)}"


@needs(os.path.join(DOCS, "api.md"))
def test_the_api_reference_documents_every_public_name():
    """docs/api.md generates a page entry (autodoc) for each name iocpx exports, no more: the
    signatures and text then come from the compiled code, which the stubs match (above)."""
    with open(os.path.join(DOCS, "api.md")) as f:
        text = f.read()
    documented = set(re.findall(r"^\.\. auto(?:class|function|exception):: iocpx\.(\w+)", text,
                                re.M))
    assert documented == set(iocpx.__all__), (
        f"missing: {sorted(set(iocpx.__all__) - documented)}, "
        f"unknown: {sorted(documented - set(iocpx.__all__))}")
    for block in re.findall(r"^\.\. autoclass:: .*\n((?:   .*\n)*)", text, re.M):
        assert ":members:" in block and ":undoc-members:" in block, block


def test_compiled_docstrings_are_whole():
    """A docstring that held a raw NUL ("\\0name" written without its backslash escaped) is
    cut short in the compiled module, and so in help() and the API reference."""
    for name in iocpx.__all__:
        obj = getattr(iocpx, name)
        for member in [obj] + [getattr(obj, m) for m in public_members(obj)
                               if isinstance(obj, type)]:
            doc = getattr(member, "__doc__", None) or ""
            assert "\0" not in doc
            if doc.count('"') % 2:
                pytest.fail(f"{name}: an unbalanced quote, the docstring was cut: {doc[-80:]!r}")


@needs(DOCS)         # an sdist has the README but neither docs/ nor the charts it links
def test_readme_links_resolve():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [x for x in links if "://" not in x]
    assert any(x.startswith("docs/") for x in local), "the README links no docs page"
    missing = [x for x in local if not os.path.exists(os.path.join(ROOT, x))]
    assert not missing, f"README links to missing files: {missing}"


def test_tools_for_the_docs_are_declared():
    """CI installs the docs tools from docs/requirements.txt; it must name the ones conf.py uses."""
    path = os.path.join(DOCS, "requirements.txt")
    if not os.path.exists(path):
        pytest.skip("no docs/ (not a source checkout)")
    with open(path) as f:
        reqs = {re.split(r"[=<>~ ]", ln.strip())[0].lower() for ln in f
                if ln.strip() and not ln.startswith("#")}
    assert {"sphinx", "myst-parser", "furo"} <= reqs


SOURCE = re.compile(r"`((?:[\w.-]+/)*[\w.-]+\.(?:pyx|pxi|pxd|pyi|py|h|c|sh))`")
ELSEWHERE = {"loop.pyx", "src/unix/tcp.c", "src/win/tcp.c",   # uvloop's and libuv's files
             "pyconfig.h",                                      # CPython's header, in general
             "linux/io_uring.h"}                                # the kernel's header


@needs(os.path.join(DOCS, "how-it-works.md"))
def test_the_docs_name_files_that_exist():
    """Every source file a docs page names in `backquotes` exists (under the repository or
    src/iocpx/), and How it works names every source file of the engine and its backends."""
    pkg_src = os.path.join(ROOT, "src", "iocpx")
    named = {}
    for page in sorted(os.listdir(DOCS)):
        if page.endswith(".md"):
            with open(os.path.join(DOCS, page)) as f:
                named[page] = set(SOURCE.findall(f.read())) - ELSEWHERE
    missing = [f"{page}: {p}" for page, paths in named.items() for p in sorted(paths)
               if not any(os.path.exists(os.path.join(base, p)) for base in (ROOT, pkg_src))]
    assert not missing, f"the docs name files that do not exist: {missing}"
    sources = {os.path.relpath(os.path.join(d, f), pkg_src).replace(os.sep, "/")
               for d, _, files in os.walk(pkg_src) for f in files
               if f.endswith((".pyx", ".pxi", ".pxd", ".h"))}
    told = {p[len("src/iocpx/"):] if p.startswith("src/iocpx/") else p
            for p in named["how-it-works.md"]}
    assert not sources - told, f"How it works does not place: {sorted(sources - told)}"


def test_the_source_map_in_core_names_every_file():
    """The map of the source, _core.pyx's docstring, names every engine and backend source
    file, and only files that exist."""
    import iocpx._core
    pkg_src = os.path.join(ROOT, "src", "iocpx")
    if not os.path.isdir(pkg_src):
        pytest.skip("needs the source tree (src/iocpx)")
    doc = iocpx._core.__doc__ or ""
    named = set(re.findall(r"((?:[\w]+/)?_?[\w]+\.(?:pyx|pxi|pxd|h))\b", doc)) - ELSEWHERE
    missing = sorted(p for p in named if not os.path.exists(os.path.join(pkg_src, p)))
    assert not missing, f"_core.pyx's map names files that do not exist: {missing}"
    sources = {os.path.relpath(os.path.join(d, f), pkg_src).replace(os.sep, "/")
               for d, _, files in os.walk(pkg_src) for f in files
               if f.endswith((".pyx", ".pxi", ".pxd", ".h"))}
    told = set(named) | {"_core.pyx"}           # the file that holds the map
    for m in re.finditer(r"(\w+)\.pyx/\.pxd|(\w+)\.pxd/\.pyx", doc):   # "_backend.pxd/.pyx"
        stem = m.group(1) or m.group(2)
        told |= {stem + ".pyx", stem + ".pxd"}
    assert not sources - told, f"_core.pyx's map does not name: {sorted(sources - told)}"
