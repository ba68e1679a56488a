"""The environment record: the tokenizer's digest follows what it does, not its files."""

from __future__ import annotations

from tokenizers import processors
from transformers import AutoTokenizer

from errwise.environment import cpu_flags, tokenizer_digest


def test_the_tokenizer_digest_follows_behaviour_not_files(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    digest = tokenizer_digest(tok)
    tok.save_pretrained(tmp_path / "copy")
    config = tmp_path / "copy" / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"local_files_only": true,', 1))  # a setting of no effect
    assert tokenizer_digest(AutoTokenizer.from_pretrained(tmp_path / "copy")) == digest
    # A post-processor that puts a BOS token before every prompt (transformers 4.56's GGUF conversion) is another
    # tokenizer; so is another end token.
    bos = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<unk> $A", special_tokens=[("<unk>", bos.unk_token_id)]
    )
    assert bos("a b")["input_ids"][0] == bos.unk_token_id
    assert tokenizer_digest(bos) != digest
    eos = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos.eos_token = "<unk>"
    assert tokenizer_digest(eos) != digest


def test_cpu_flags_reads_the_bf16_instructions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: X\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_flags(str(info)) == ["amx_bf16", "amx_tile", "avx512_bf16"]
    assert cpu_flags(str(tmp_path / "missing")) == []


def test_code_version_names_the_commit_and_uncommitted_changes(tmp_path):
    import re
    import subprocess

    from errwise import __version__
    from errwise.environment import code_version

    assert code_version(tmp_path) == __version__  # not a git checkout
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / ".gitignore").write_text("venv/\n")
    installed = tmp_path / "venv" / "errwise"  # a copy installed in an ignored folder of another checkout
    installed.mkdir(parents=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", head) and code_version(src) == f"{__version__}+g{head}"
    assert code_version(installed) == __version__
    (src / "new.py").write_text("")  # untracked: not a change of the code that ran
    assert code_version(src) == f"{__version__}+g{head}"
    (src / "a.py").write_text("x = 2\n")
    assert code_version(src) == f"{__version__}+g{head}.dirty"
