#!/usr/bin/env python3
"""Generates src/tokenizer/unicode_table.cpp: a compact range table of Unicode
general-category classes (\\p{L}, \\p{N}, ...) plus the White_Space property,
used by the pre-tokenizer.

Token ids must match llama.cpp's, whose tables (llama.cpp 0.3.36) follow
Unicode 15.1, so the categories should come from that version:
  - with --unicodedata2 DIR, from the PyPI package unicodedata2==15.1.0
    installed there (pip install --target DIR unicodedata2==15.1.0);
  - otherwise from UnicodeData.txt in --ucd (Debian's `unicode-data` package,
    /usr/share/unicode, which is Unicode 15.0 on Debian 12).
White_Space always comes from PropList.txt in --ucd (unchanged since 6.3).
The output is committed, so this only runs when the table is regenerated.

Usage: src/tokenizer/gen_unicode_table.py [--ucd DIR] [--unicodedata2 DIR] [--out FILE]
"""
import argparse
import os
import re
import sys

MAX_CODEPOINT = 0x110000

# Class numbers must match enum class CharClass in unicode.h.
UNDEFINED, NUMBER, LETTER, SEPARATOR, MARK, PUNCTUATION, SYMBOL, CONTROL = range(8)
WHITESPACE_BIT = 0x08

CATEGORY_TO_CLASS = {
    "Cn": UNDEFINED,
    "Cc": CONTROL, "Cf": CONTROL, "Co": CONTROL, "Cs": CONTROL,
    "Ll": LETTER, "Lm": LETTER, "Lo": LETTER, "Lt": LETTER, "Lu": LETTER,
    "Mc": MARK, "Me": MARK, "Mn": MARK,
    "Nd": NUMBER, "Nl": NUMBER, "No": NUMBER,
    "Pc": PUNCTUATION, "Pd": PUNCTUATION, "Pe": PUNCTUATION, "Pf": PUNCTUATION,
    "Pi": PUNCTUATION, "Po": PUNCTUATION, "Ps": PUNCTUATION,
    "Sc": SYMBOL, "Sk": SYMBOL, "Sm": SYMBOL, "So": SYMBOL,
    "Zl": SEPARATOR, "Zp": SEPARATOR, "Zs": SEPARATOR,
}


def read_categories(path):
    classes = bytearray([UNDEFINED]) * MAX_CODEPOINT
    range_start = None
    lowercase_to_ascii = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(";")
            if len(fields) < 15:
                continue
            cp = int(fields[0], 16)
            name, category = fields[1], fields[2]
            cls = CATEGORY_TO_CLASS[category]
            lower = int(fields[13], 16) if fields[13] else None
            if lower is not None and lower < 0x80 and cp >= 0x80:
                lowercase_to_ascii.append((cp, lower))
            if name.endswith(", First>"):
                range_start = cp
                continue
            if name.endswith(", Last>"):
                for c in range(range_start, cp + 1):
                    classes[c] = cls
                range_start = None
                continue
            classes[cp] = cls
    return classes, lowercase_to_ascii


def read_categories_unicodedata2(site_dir):
    sys.path.insert(0, site_dir)
    import unicodedata2  # noqa: E402  (only present when asked for)

    classes = bytearray(MAX_CODEPOINT)
    lowercase_to_ascii = []
    for cp in range(MAX_CODEPOINT):
        ch = chr(cp)
        classes[cp] = CATEGORY_TO_CLASS[unicodedata2.category(ch)]
        if cp >= 0x80 and len(ch.lower()) == 1 and ord(ch.lower()) < 0x80:
            lowercase_to_ascii.append((cp, ord(ch.lower())))
    return classes, lowercase_to_ascii, unicodedata2.unidata_version


def read_whitespace(path):
    whitespace = []
    pattern = re.compile(r"^([0-9A-F]+)(?:\.\.([0-9A-F]+))?\s*;\s*White_Space\b")
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = pattern.match(line)
            if m:
                first = int(m.group(1), 16)
                last = int(m.group(2), 16) if m.group(2) else first
                whitespace.extend(range(first, last + 1))
    return whitespace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ucd", default="/usr/share/unicode")
    ap.add_argument("--unicodedata2", metavar="DIR", help="directory holding the unicodedata2 package")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "unicode_table.cpp"))
    args = ap.parse_args()

    unicode_data = os.path.join(args.ucd, "UnicodeData.txt")
    prop_list = os.path.join(args.ucd, "PropList.txt")
    for p in (unicode_data, prop_list):
        if not os.path.exists(p):
            sys.exit(f"error: {p} not found (install Debian's unicode-data package or pass --ucd DIR)")
    version = "unknown"
    with open(os.path.join(args.ucd, "ReadMe.txt"), encoding="utf-8", errors="replace") as f:
        m = re.search(r"Version (\d+\.\d+\.\d+)", f.read())
        if m:
            version = m.group(1)

    if args.unicodedata2:
        classes, lowercase_to_ascii, version = read_categories_unicodedata2(args.unicodedata2)
    else:
        classes, lowercase_to_ascii = read_categories(unicode_data)
    # The pre-tokenizers lower-case only the letters of contractions ('s 't 're
    # 've 'm 'll 'd); ASCII lower-casing is exact if no other code point maps there.
    for cp, lower in lowercase_to_ascii:
        if chr(lower) in "strevmld":
            sys.exit(f"error: U+{cp:04X} lower-cases to {chr(lower)!r}; contraction matching needs a full case table")
    whitespace = read_whitespace(prop_list)
    if not whitespace:
        sys.exit("error: no White_Space entries found in PropList.txt")
    for cp in whitespace:
        classes[cp] |= WHITESPACE_BIT

    ranges = []
    for cp in range(MAX_CODEPOINT):
        if not ranges or ranges[-1][1] != classes[cp]:
            ranges.append((cp, classes[cp]))

    lines = [
        "// Generated by src/tokenizer/gen_unicode_table.py from the Unicode "
        f"Character Database {version}; do not edit.",
        "// Each entry starts a run of code points sharing one class byte",
        "// (bits 0-2: CharClass, bit 3: White_Space); a run lasts until the next entry.",
        '#include "tokenizer/unicode.h"',
        "",
        "namespace skim::unicode {",
        "",
        f"const char* const kUnicodeVersion = \"{version}\";",
        "",
        f"const ClassRange kClassRanges[{len(ranges)}] = {{",
    ]
    for cp, cls in ranges:
        lines.append(f"    {{0x{cp:06X}, 0x{cls:02X}}},")
    lines += ["};", "", f"const size_t kClassRangeCount = {len(ranges)};", "", "}  // namespace skim::unicode", ""]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}: {len(ranges)} ranges, Unicode {version}")


if __name__ == "__main__":
    main()
