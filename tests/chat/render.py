#!/usr/bin/env python3
"""Render conversations with Qwen3's real Jinja chat template (the oracle
for tests/test_chat.c).

usage: render.py TOKENIZER_CONFIG_JSON CASES_JSON

TOKENIZER_CONFIG_JSON: Hugging Face tokenizer_config.json; its
"chat_template" field is the template.
CASES_JSON: a list of {"messages": [{"role", "content",
["reasoning_content"]}, ...], "add_generation_prompt": bool,
"enable_thinking": bool}.

For each case, writes to stdout "<byte length>\\n" followed by the
rendered text in UTF-8.  When enable_thinking is true, the case is also
rendered without the variable at all (the template's default) and the two
must agree.  The environment is set up as transformers'
_compile_jinja_template does: ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension, a tojson filter
(ensure_ascii off), raise_exception and strftime_now, and the special
tokens of the config passed as variables.
Exit status: 2 bad usage / unreadable input, 3 rendering failed."""
import datetime
import json
import sys

try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError as e:  # the C test reports this
    sys.stderr.write("render.py: python3 jinja2 is not installed (%s)\n" % e)
    sys.exit(2)


def compile_template(text):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(text)


def special_tokens(cfg):
    """The special-token variables transformers passes to the template."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token",
                "pad_token", "cls_token", "mask_token"):
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if v is not None:
            out[key] = v
    if "additional_special_tokens" in cfg:
        out["additional_special_tokens"] = cfg["additional_special_tokens"]
    return out


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            cfg = json.load(f)
        with open(sys.argv[2], encoding="utf-8") as f:
            cases = json.load(f)
    except (OSError, ValueError) as e:
        sys.stderr.write("render.py: %s\n" % e)
        sys.exit(2)
    if not isinstance(cfg.get("chat_template"), str):
        sys.stderr.write("render.py: %s has no string chat_template\n" % sys.argv[1])
        sys.exit(2)
    tmpl = compile_template(cfg["chat_template"])
    toks = special_tokens(cfg)
    out = sys.stdout.buffer
    for i, case in enumerate(cases):
        kw = dict(toks)
        kw.update(messages=case["messages"], tools=None, documents=None,
                  add_generation_prompt=case["add_generation_prompt"])
        try:
            text = tmpl.render(enable_thinking=case["enable_thinking"], **kw)
            if case["enable_thinking"]:
                default = tmpl.render(**kw)
                if default != text:
                    sys.stderr.write("render.py: case %d: enable_thinking=True differs "
                                     "from the default\n" % i)
                    sys.exit(3)
        except jinja2.exceptions.TemplateError as e:
            sys.stderr.write("render.py: case %d: %s\n" % (i, e))
            sys.exit(3)
        data = text.encode("utf-8")
        out.write(b"%d\n" % len(data))
        out.write(data)
    out.flush()


if __name__ == "__main__":
    main()
