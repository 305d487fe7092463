"""The default corpus built from gettext catalogs: cleaning, filters, parallel held-out split, manifest."""

from __future__ import annotations

import json
import time

import pytest

polib = pytest.importorskip("polib")

from jlang.data.corpora import gettext as gc  # noqa: E402
from jlang.data.corpora.gettext import (  # noqa: E402
    CorpusBuildError,
    build_gettext_corpus,
    clean_message,
    count_tokens,
    ensure_default_corpus,
    is_heldout,
)
from jlang.data.corpora.gettext import cache as gettext_cache  # noqa: E402

# English msgid -> {locale: translation}; None marks a fuzzy entry.
MESSAGES = {
    "Ensure this value is greater than or equal to %(limit_value)s.": {
        "fr": "Assurez-vous que cette valeur est supérieure ou égale à %(limit_value)s.",
        "zh_Hans": "确保该值大于或等于 %(limit_value)s。",
        "zh_Hant": "確保該值大於或等於 %(limit_value)s。",
        "ja": "%(limit_value)s 以上の値を入力してください。",
    },
    'Why not <a href="{url}">add some pages</a> now?': {
        "fr": 'Pourquoi ne pas <a href="{url}">ajouter des pages</a> maintenant ?',
        "zh_Hans": '为什么不现在<a href="{url}">添加一些页面</a>？',
    },
    "The file %s could not be read &amp; was skipped.": {
        "fr": "Le fichier %s n'a pas pu être lu &amp; a été ignoré.",
        "zh_Hans": "无法读取文件 %s，已跳过。",
    },
    "This translation is still marked fuzzy here.": {"fr": None, "zh_Hans": "这个翻译仍然是模糊的。"},
    "Too short": {"fr": "Trop court", "zh_Hans": "太短"},
    "This message was never translated at all.": {"fr": "", "zh_Hans": ""},
    "Copy of the English source text.": {"fr": "Copy of the English source text."},
}
# Many plain messages so the split has both sides, each translated the same way in fr (dedup check).
for i in range(60):
    MESSAGES[f"Saved item number {i} in the list."] = {
        "fr": f"Élément numéro {i} enregistré dans la liste.",
        "zh_Hans": f"已保存列表中的第 {i} 项。",
    }
MESSAGES["Your changes were saved just now."] = {"fr": "Modifications enregistrées.", "zh_Hans": "已保存更改。"}
MESSAGES["All of your changes have been saved."] = {
    "fr": "Modifications enregistrées.",
    "zh_Hans": "所有更改均已保存。",
}


def write_package(root, with_mo_for=()):
    """A fake installed package: pkg/locale/<code>/LC_MESSAGES/django.po (or .mo) for every locale used."""
    locales = sorted({loc for tr in MESSAGES.values() for loc in tr} | {"en"})
    for loc in locales:
        po = polib.POFile()
        po.metadata = {"Content-Type": "text/plain; charset=UTF-8", "Language": loc}
        for msgid, tr in MESSAGES.items():
            if loc == "en":
                po.append(polib.POEntry(msgid=msgid, msgstr=""))
            elif loc in tr:
                text = tr[loc]
                po.append(polib.POEntry(msgid=msgid, msgstr=text or "", flags=["fuzzy"] if text is None else []))
        po.append(
            polib.POEntry(
                msgid="An obsolete message that should be skipped.", msgstr="Obsolète, à ignorer.", obsolete=True
            )
        )
        target = root / "pkg" / "locale" / loc / "LC_MESSAGES"
        target.mkdir(parents=True)
        if loc in with_mo_for:
            po.save_as_mofile(str(target / "django.mo"))
        else:
            po.save(str(target / "django.po"))
    return root


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_clean_message_strips_placeholders_and_markup():
    cases = {
        "Ensure this value is greater than or equal to %(limit_value)s.": (
            "Ensure this value is greater than or equal to."
        ),
        "Line %s: Entry before first section header": "Line: Entry before first section header",
        "You have added the '%(code)s' voucher": "You have added the voucher",
        "%(value)s%% discount on %(range)s": "discount on",
        "100% sure, with %d items and %1$s and {0} and {name}": "100% sure, with items and and and",
        'Why not <a href="%(url)s">add some</a>?<br/>Next': "Why not add some? Next",
        "Tom &amp; Jerry&nbsp;show": "Tom & Jerry show",
        "Show {{ count }} items {% if x %}here{% endif %}": "Show items here",
        "In your time zone %(tz)s, shown as [1:%(formatted)s] or [2:this link].": (
            "In your time zone, shown as or this link."
        ),
        "Multi\n   line\tmessage": "Multi line message",
        "«\u00a0%(title)s\u00a0» créée": "créée",
    }
    for raw, expect in cases.items():
        assert clean_message(raw) == expect, raw


def test_locale_choice_for_chinese_and_variants():
    assert gc.locale_rank("zh_Hans", "zh") == 0
    assert gc.locale_rank("zh_CN", "zh") < gc.locale_rank("zh", "zh")
    assert gc.locale_rank("zh_Hant", "zh") is None and gc.locale_rank("zh_TW", "zh") is None
    assert gc.locale_rank("zh-Hant", "zh_Hant") == 0
    assert gc.locale_rank("fr", "fr") < gc.locale_rank("fr_FR", "fr") < gc.locale_rank("fr_CA", "fr")
    assert gc.locale_rank("pt_BR", "pt_BR") == 0 and gc.locale_rank("pt", "pt_BR") is None
    assert gc.locale_rank("de", "fr") is None


def test_build_on_a_small_package(tmp_path):
    src = write_package(tmp_path / "src", with_mo_for=("ja",))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="dropped ja"):
        m = build_gettext_corpus(
            out, ["en", "fr", "zh", "ja"], packages=[src], min_sentences=20, heldout_fraction=0.25, progress=False
        )
    assert m["languages"] == ["en", "fr", "zh"]
    assert m["dropped"]["ja"]["train_sentences"] < 20 and "min_sentences" in m["dropped"]["ja"]["reason"]
    assert not (out / "train" / "ja.txt").exists()

    fr = lines(out / "train" / "fr.txt") + lines(out / "heldout" / "fr.txt")
    zh = lines(out / "train" / "zh.txt") + lines(out / "heldout" / "zh.txt")
    en = lines(out / "train" / "en.txt") + lines(out / "heldout" / "en.txt")
    everything = "\n".join(fr + zh + en)
    for bad in ("%(", "%s", "{url}", "<a", "&amp;", "{0}"):
        assert bad not in everything
    assert "Assurez-vous que cette valeur est supérieure ou égale à." in fr
    assert "Pourquoi ne pas ajouter des pages maintenant ?" in fr
    assert "Le fichier n'a pas pu être lu & a été ignoré." in fr
    assert "确保该值大于或等于。" in zh and not any("確保" in t for t in zh)  # Simplified only
    assert not any("模糊" in t or "Trop court" in t or "Copy of the English" in t for t in fr)  # fuzzy/short/copy
    assert "Too short" not in en and "An obsolete message that should be skipped." not in en
    assert fr.count("Modifications enregistrées.") == 1  # deduplicated (two English messages)
    assert m["rejected_entries"]["fr"]["fuzzy"] == 1 and m["rejected_entries"]["fr"]["copy_of_english"] == 1

    # The held-out split is chosen by the English message, so it is parallel across languages.
    held_en = set(lines(out / "heldout" / "en.txt"))
    assert held_en and held_en == {e for e in en if is_heldout(e, 0.25)}
    rows = [json.loads(x) for x in lines(out / "parallel" / "heldout.jsonl")]
    assert {r["text"]["en"] for r in rows} <= held_en and len(rows) == m["parallel_heldout_rows"] > 0
    for r in rows:
        for lang, text in r["text"].items():
            assert text in lines(out / "heldout" / f"{lang}.txt")
            assert text not in lines(out / "train" / f"{lang}.txt")
    for i in range(60):
        english = f"Saved item number {i} in the list."
        split = "heldout" if is_heldout(english, 0.25) else "train"
        assert english in lines(out / split / "en.txt")
        assert f"Élément numéro {i} enregistré dans la liste." in lines(out / split / "fr.txt")
        assert f"已保存列表中的第 {i} 项。" in lines(out / split / "zh.txt")

    saved = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert saved == m
    assert m["counts"]["fr"]["train_sentences"] == len(lines(out / "train" / "fr.txt"))
    assert m["sources"][0]["catalog_files_read"] >= 3 and "sha256" in m["split"]["rule"]


def test_missing_package_names_the_pip_requirement(tmp_path):
    with pytest.raises(CorpusBuildError, match="pip install"):
        build_gettext_corpus(tmp_path, ["en"], packages=["surely-not-an-installed-package-xyz"], progress=False)


def test_ensure_default_corpus_builds_once_atomically(tmp_path, monkeypatch):
    calls = []

    def fake_build(out, **kw):
        calls.append(out)
        (out / "train").mkdir()
        (out / "manifest.json").write_text("{}")

    monkeypatch.setattr(gettext_cache, "build_gettext_corpus", fake_build)
    monkeypatch.setenv("JLANG_CACHE_DIR", str(tmp_path / "cache"))
    target = gc.default_corpus_dir()
    assert target == tmp_path / "cache" / "corpora" / "gettext-v1"
    assert ensure_default_corpus(progress=False) == target
    assert ensure_default_corpus(progress=False) == target
    assert len(calls) == 1 and calls[0] != target and (target / "manifest.json").exists()
    assert [p.name for p in target.parent.iterdir()] == ["gettext-v1"]  # no temporary left behind


def test_real_django_catalogs_subset(tmp_path):
    pytest.importorskip("django")
    start = time.perf_counter()
    m = build_gettext_corpus(tmp_path, ["en", "fr", "ja"], packages=["Django"], min_sentences=50, progress=False)
    assert time.perf_counter() - start < 30
    assert m["languages"] == ["en", "fr", "ja"]
    assert all(m["counts"][lang]["train_sentences"] > 100 for lang in m["languages"])
    assert m["sources"][0]["package"] == "Django" and m["sources"][0]["license"]
    text = (tmp_path / "train" / "fr.txt").read_text(encoding="utf-8")
    assert "%(" not in text and "<a " not in text
    rows = [json.loads(x) for x in lines(tmp_path / "parallel" / "heldout.jsonl")]
    assert rows and all(is_heldout(r["text"]["en"], 0.1) for r in rows)


def test_count_tokens(tmp_path):
    class CharTokenizer:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(t) for t in texts]}

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "fr.txt").write_text("abc\nde\n", encoding="utf-8")
    (tmp_path / "train" / "en.txt").write_text("x\n", encoding="utf-8")
    assert count_tokens(tmp_path, CharTokenizer()) == {"en": 1, "fr": 5}
