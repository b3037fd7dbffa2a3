"""Python's jsonschema as the referee between proto/sensor_reading.v1.json and the C validator.

1. The schema is a valid draft 2020-12 schema.
2. The schema's verdict on every fixture matches its directory (valid/ or invalid/).
3. The C validator (the contract-check tool meson builds) gives the schema's verdict on every
   fixture and on a few thousand seeded random and mutated documents; a valid document's
   canonical dump must validate again (contract-check prints E otherwise).

Needs `pip install -r tests/requirements.txt` and a build containing contract-check:
SB_BUILD_DIR names it (default: build), e.g. `ninja -C build tests/unit/contract/contract-check`.
"""

import calendar
import json
import os
import pathlib
import random
import subprocess

import pytest
from jsonschema import Draft202012Validator

ROOT = pathlib.Path(__file__).resolve().parents[3]
PROTO = ROOT / "proto"
SCHEMA = json.loads((PROTO / "sensor_reading.v1.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
FIXTURES = sorted((PROTO / "examples").glob("*/*.json"))
SEED = 20260523
N_GENERATED = 2400


def schema_says(doc):
    return VALIDATOR.is_valid(doc)


def contract_check(lines):
    """The C verdicts ('1', '0' or 'E') for JSON texts that each fit on one line."""
    build = pathlib.Path(os.environ.get("SB_BUILD_DIR", "build"))
    if not build.is_absolute():
        build = ROOT / build
    exe = build / "tests" / "unit" / "contract" / "contract-check"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build it with `ninja -C {build} "
                    "tests/unit/contract/contract-check` or set SB_BUILD_DIR")
    for line in lines:
        assert "\n" not in line
    out = subprocess.run([str(exe)], input="".join(l + "\n" for l in lines).encode(),
                         capture_output=True, check=True, timeout=120).stdout.decode()
    verdicts = out.split("\n")[:-1]
    assert len(verdicts) == len(lines), out
    return verdicts


def test_schema_is_valid_2020_12():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_enough_fixtures():
    valid = [f for f in FIXTURES if f.parent.name == "valid"]
    invalid = [f for f in FIXTURES if f.parent.name == "invalid"]
    assert len(valid) >= 12 and len(invalid) >= 25, (len(valid), len(invalid))
    assert {f.parent.name for f in FIXTURES} == {"valid", "invalid"}


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_schema_verdict_matches_directory(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert schema_says(doc) == (path.parent.name == "valid")


def test_c_verdict_matches_directory_on_fixtures():
    # JSON strings cannot hold a raw newline, so joining lines keeps every document intact
    # (and keeps numbers such as 1e400 as written, which a json round trip would not).
    texts = [p.read_text(encoding="utf-8").replace("\n", " ") for p in FIXTURES]
    verdicts = contract_check(texts)
    wrong = [(p.parent.name, p.name, v) for p, v in zip(FIXTURES, verdicts)
             if v != ("1" if p.parent.name == "valid" else "0")]
    assert not wrong


# ---- generated documents ------------------------------------------------------------------

HEX = "0123456789abcdefABCDEF"
SENSOR_CHARS = "abcXYZ019._:-/ é\n\t"
NASTY = ["", " ", "\n", "\t", "\u0000", "\u007f", "é", "\U0001F321", "٣", "２", "/", "~", "\"", "\\"]


def rand_text(rng, alphabet, lo, hi):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def gen_uuid(rng):
    groups = [rand_text(rng, HEX, n, n) for n in (8, 4, 4, 4, 12)]
    s = "-".join(groups)
    r = rng.random()
    if r < 0.15:
        i = rng.randrange(len(s))
        s = s[:i] + rng.choice("gG-x " + "".join(NASTY)) + s[i + 1:]
    elif r < 0.25:
        s = s + rng.choice(["", "0", "\n"]) if rng.random() < 0.5 else s[:-1]
    elif r < 0.3:
        s = s.replace("-", "")
    return s


def gen_sensor_id(rng):
    r = rng.random()
    if r < 0.5:
        first = rng.choice("aZ09")
        return first + rand_text(rng, "azAZ09._:-", 0, 63)
    if r < 0.7:
        return rng.choice("aZ0") + rand_text(rng, "az09._:-", 62, 65)
    return rand_text(rng, SENSOR_CHARS, 0, 6) + rng.choice(["", *NASTY])


def gen_ts(rng):
    y = rng.choice([1998, 1999, 2000, 2001, 2023, 2024, 2099, 2100, 2101, rng.randint(2000, 2099)])
    mo = rng.choice([0, 1, 2, 12, 13, rng.randint(1, 12)])
    d = rng.choice([0, 1, 28, 29, 30, 31, 32, rng.randint(1, 28)])
    if rng.random() < 0.15:  # the UTC edge days, exactly
        y, mo, d = rng.choice([(1999, 12, 31), (2100, 1, 1), (1999, 12, 30), (2100, 1, 2)])
    h = rng.choice([0, 23, 24, rng.randint(0, 23)])
    mi = rng.choice([0, 59, 60, rng.randint(0, 59)])
    s = rng.choice([0, 59, 60, rng.randint(0, 59)])
    sep = rng.choices(["T", "t", " ", "x"], [6, 2, 1, 1])[0]
    frac = ""
    if rng.random() < 0.5:
        n = rng.choice([0, 1, 3, 6, 9, 10])
        frac = "." + rand_text(rng, "0123456789", n, n)
    off = rng.choices(["Z", "z", "+", "-", "", "+0100"], [5, 2, 4, 4, 1, 1])[0]
    if off in ("+", "-"):
        off += f"{rng.choice([0, 1, 23, 24, rng.randint(0, 23)]):02d}:{rng.choice([0, 30, 59, 60]):02d}"
    text = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
    r = rng.random()
    if r < 0.05:
        text += rng.choice(NASTY)
    elif r < 0.08:
        text = text.replace("-", "/", 1)
    elif r < 0.1:
        text = f"{y}-{mo}-{d}T{h}:{mi}:{s}Z"
    return text


def gen_number(rng):
    return rng.choice([
        0, -0.0, 1, -1, 21.5, 0.1, rng.uniform(-1e6, 1e6), rng.randint(-2**63, 2**63),
        2**63, 2**64 + 1, 10**30, -10**30, 10**308, 10**309, 10**400, 1.7976931348623157e308,
        -1.7976931348623157e308, 5e-324, 1e-300, rng.random() * 10 ** rng.randint(-300, 300),
    ])


def gen_wrong_type(rng):
    return rng.choice([None, True, False, "21.5", "", [], [1], {}, {"a": 1}, 0, 1.5])


def gen_unit(rng):
    r = rng.random()
    if r < 0.6:
        return rand_text(rng, "".join(chr(c) for c in range(0x21, 0x7F)), 1, 16)
    if r < 0.75:
        return rand_text(rng, "abc", 15, 17)
    return rand_text(rng, "Cel%" + "".join(NASTY), 0, 4)


def gen_tag_key(rng):
    r = rng.random()
    if r < 0.6:
        return rng.choice("az") + rand_text(rng, "az09_", 0, 31)
    if r < 0.75:
        return rng.choice("az") + rand_text(rng, "az09_", 30, 33)
    return rand_text(rng, "aZ9_-./~é " + "".join(NASTY), 0, 4)


def gen_tag_value(rng):
    r = rng.random()
    if r < 0.5:
        return rand_text(rng, "ab é\U0001F321٣", 0, 64)
    if r < 0.7:
        return rand_text(rng, rng.choice(["a", "é", "\U0001F321"]), 63, 66)
    if r < 0.85:
        return rand_text(rng, "ab" + "".join(NASTY), 0, 5)
    return gen_wrong_type(rng)


def gen_tags(rng):
    if rng.random() < 0.1:
        return gen_wrong_type(rng)
    n = rng.choice([0, 1, 3, 15, 16, 17, rng.randint(0, 16)])
    tags = {}
    for i in range(n):
        key = gen_tag_key(rng) if rng.random() < 0.3 else f"k{i}"
        tags[key] = gen_tag_value(rng) if rng.random() < 0.4 else f"v{i}"
    return tags


def good_ts(rng):
    y, mo = rng.randint(2000, 2099), rng.randint(1, 12)
    d = rng.randint(1, calendar.monthrange(y, mo)[1])
    frac = "" if rng.random() < 0.5 else "." + rand_text(rng, "0123456789", 1, 9)
    off = rng.choice(["Z", "z", f"{rng.choice('+-')}{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"])
    return (f"{y:04d}-{mo:02d}-{d:02d}{rng.choice('Tt')}{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}{frac}{off}")


def good_tags(rng):
    return {rng.choice("az") + rand_text(rng, "az09_", 0, 31):
            rand_text(rng, "ab é\U0001F321٣", 0, 64) for _ in range(rng.randint(0, 16))}


# Per field: a generator of valid values and one that tries hard to break the rule.
GENERATORS = {
    "id": (lambda rng: "-".join(rand_text(rng, HEX, n, n) for n in (8, 4, 4, 4, 12)), gen_uuid),
    "sensor_id": (lambda rng: rng.choice("aZ09") + rand_text(rng, "azAZ09._:-", 0, 63),
                  gen_sensor_id),
    "ts": (good_ts, gen_ts),
    "value": (lambda rng: rng.choice([rng.uniform(-1e9, 1e9), rng.randint(-10**20, 10**20)]),
              gen_number),
    "unit": (lambda rng: rand_text(rng, "".join(chr(c) for c in range(0x21, 0x7F)), 1, 16),
             gen_unit),
    "tags": (good_tags, gen_tags),
}


def gen_document(rng):
    """A valid reading, then up to three fields rewritten by the rule breakers, removed, or
    mistyped, or an unknown field added."""
    doc = {f: good(rng) for f, (good, _) in GENERATORS.items()
           if f in ("sensor_id", "value") or rng.random() < 0.6}
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        r = rng.random()
        field = rng.choice(list(GENERATORS))
        if r < 0.15:
            doc.pop(field, None)
        elif r < 0.3:
            doc[field] = gen_wrong_type(rng)
        elif r < 0.4:
            doc[rng.choice(["extra", "Value", "sensorId", "", "ts ", "\u00e9"])] = 1
        else:
            doc[field] = GENERATORS[field][1](rng)
    if rng.random() < 0.02:
        return rng.choice([[doc], "t1", 42, None, True])
    return doc


def test_c_agrees_with_schema_on_generated_documents():
    rng = random.Random(SEED)
    docs = [gen_document(rng) for _ in range(N_GENERATED)]
    # ensure_ascii keeps every document on one line and its text plain ASCII; lone surrogates
    # are never generated (jansson refuses them while JSON Schema cannot see them).
    texts = [json.dumps(d, ensure_ascii=True) for d in docs]
    expected = ["1" if schema_says(d) else "0" for d in docs]
    got = contract_check(texts)

    assert "E" not in got, [t for t, g in zip(texts, got) if g == "E"][:5]
    mismatches = [(e, g, t) for e, g, t in zip(expected, got, texts) if e != g]
    assert not mismatches, f"{len(mismatches)} disagreements, first ones: {mismatches[:5]}"
    # A generator that only made invalid (or only valid) documents would prove little.
    n_valid = expected.count("1")
    assert 0.2 * N_GENERATED < n_valid < 0.8 * N_GENERATED, n_valid
