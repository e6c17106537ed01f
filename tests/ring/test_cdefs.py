"""The cffi declarations (ring_cdefs.h) and the public header (ring.h) declare the same
ahr_* functions with the same parameter types, the same structs with the same fields, and
the same macros; the binding exposes all of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asapo_hpc._core import ffi, lib

INCLUDE = Path(__file__).resolve().parents[2] / "csrc" / "include" / "asapo_hpc"
HEADER = INCLUDE / "ring.h"
CDEFS = INCLUDE / "ring_cdefs.h"

_TYPE_WORDS = {"const", "struct", "void", "char", "int", "unsigned", "signed", "long",
               "short", "size_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t", "int8_t",
               "int16_t", "int32_t", "int64_t", "double", "float"}


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def normalise_param(param: str) -> str:
    """A parameter's type alone: 'const char *const *groups' -> 'const char*const*'."""
    param = re.sub(r"\s+", " ", param.strip())
    param = re.sub(r"\s*\*\s*", "*", param)
    tokens = re.findall(r"[A-Za-z_]\w*|\*|\[\]", param)
    # drop the trailing name: the last identifier that is not a type word and follows a type
    if len(tokens) > 1 and re.match(r"[A-Za-z_]", tokens[-1]) and tokens[-1] not in _TYPE_WORDS \
            and tokens[-2] != "struct":
        tokens = tokens[:-1]
    out = ""
    for tok in tokens:
        if tok == "*" or not out or out.endswith("*"):
            out += tok if tok == "*" or not out else tok
        else:
            out += " " + tok
    return out


def functions(text: str, prefix: str = "ahr_") -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (return type, parameter types) of every declared function `prefix`*."""
    text = strip_comments(text)
    out = {}
    pattern = rf"([A-Za-z_][\w\s\*]*?)\b({prefix}\w+)\s*\(([^;{{]*?)\)\s*;"
    for ret, name, params in re.findall(pattern, text):
        ret = normalise_param(ret + " x")
        plist = [] if params.strip() in ("", "void") else params.split(",")
        out[name] = (ret, tuple(normalise_param(p) for p in plist))
    return out


def structs(text: str, prefix: str = "ahr_") -> dict[str, tuple[str, ...]]:
    """struct name -> its fields, each 'type name', in order."""
    text = strip_comments(text)
    out = {}
    for name, body in re.findall(rf"struct\s+({prefix}\w+)\s*\{{(.*?)\}}\s*;", text, re.S):
        fields = [re.sub(r"\s+", " ", f.strip()) for f in body.split(";") if f.strip()]
        out[name] = tuple(re.sub(r"\s*\*\s*", "* ", f) for f in fields)
    return out


def macros(text: str) -> set[str]:
    return set(re.findall(r"^\s*#define\s+(AHR_\w+)", text, re.M))


@pytest.fixture(scope="module")
def texts():
    return HEADER.read_text(), CDEFS.read_text()


def test_parser_sees_types_not_names():
    got = functions("int ahr_x(const char *const *groups, uint32_t n, struct ahr_ring **out,"
                    " const void *data, struct ahr_config cfg);")
    assert got == {"ahr_x": ("int", ("const char*const*", "uint32_t", "struct ahr_ring**",
                                     "const void*", "struct ahr_config"))}
    assert functions("void *ahr_base(const struct ahr_ring *ring);") == {
        "ahr_base": ("void*", ("const struct ahr_ring*",))}
    # a renamed parameter is no difference; a changed type is
    a = functions("int ahr_f(uint32_t a, uint64_t *b);")
    assert a == functions("int ahr_f(uint32_t other, uint64_t * c);")
    assert a != functions("int ahr_f(uint32_t a, uint32_t *b);")
    assert a != functions("int ahr_f(uint32_t a);")


def test_same_functions_and_parameter_types(texts):
    header, cdefs = (functions(t) for t in texts)
    for text, parsed in zip(texts, (header, cdefs), strict=True):  # the parser missed none
        assert set(parsed) == set(re.findall(r"\b(ahr_\w+)\s*\(", strip_comments(text)))
    assert len(header) >= 30
    assert sorted(header) == sorted(cdefs), "functions declared in one file only: " + \
        str(sorted(set(header) ^ set(cdefs)))
    for name in header:
        assert header[name] == cdefs[name], f"{name}: ring.h {header[name]} vs " \
                                            f"ring_cdefs.h {cdefs[name]}"


def test_same_structs_and_fields(texts):
    header, cdefs = (structs(t) for t in texts)
    assert {"ahr_config", "ahr_reservation", "ahr_pub", "ahr_msg", "ahr_group_stats",
            "ahr_ring_stats"} <= set(header)
    assert header == cdefs


def test_same_macros(texts):
    header, cdefs = texts
    assert macros(cdefs) <= macros(header)
    assert macros(header) - macros(cdefs) <= {"ASAPO_HPC_RING_H"}


def test_shim_is_python_only(texts):
    header, cdefs = texts
    assert "ahrpy_" not in header
    assert functions(cdefs, "ahrpy_"), "the shim functions are declared for cffi"


def test_binding_exposes_every_declared_function_and_struct(texts):
    header = texts[0]
    for name in functions(header):
        assert callable(getattr(lib, name)), name
    for name, fields in structs(header).items():
        c_fields = [f for f, _ in ffi.typeof(f"struct {name}").fields]
        assert c_fields == [f.split()[-1].lstrip("*") for f in fields], name
    assert lib.AHR_LAYOUT_VERSION == int(re.search(r"AHR_LAYOUT_VERSION (\d+)u",
                                                   header).group(1))
