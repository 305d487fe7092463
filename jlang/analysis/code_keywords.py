"""Small keyword tables of programming languages (and frequent English words), for the code logit lens.

cisnlp/code-logitlens matches decoded top-k tokens against per-language keyword
and built-in lists (`datasets/keywords/*.json`, methods.md §9.4). These tables
are jlang's own, written from each language's reference: the reserved words,
plus a handful of built-ins, directives, tags or properties that mark the
language in everyday code. They are deliberately small (tens of words): a
token that is a keyword of a language is strong evidence that the lens "thinks
in" that language, while common identifiers would blur every language together.

Tables overlap on purpose (`if`, `for`, `return` are keywords of Python, C and
Rust): the lens reports, per language, the share of top-k tokens that are
*its* keywords, shared or not, and separately the share that are keywords of
that language only (`exclusive`).

`english` holds frequent English function and general words, to see whether
English surfaces in the middle layers while the model reads code (Kargaran et
al.'s question); it overlaps with Python's `and`, `or`, `not`, `in`, `is`, ...

Matching (`jlang.analysis.code_lens.token_keywords`): a token's decoded text is
stripped of whitespace and then of a leading run of `< / # @ . : $ ! -`
(`<div`, `</span`, `#include`, `@media`, `.class`); the rest is compared
exactly (case-sensitively), except for HTML and English
(`CASE_INSENSITIVE`), whose words are compared in lowercase.
"""

from __future__ import annotations

__all__ = ["CASE_INSENSITIVE", "KEYWORDS"]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_C = """auto break case char const continue default do double else enum extern float for goto if inline int long
register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while _Bool
include define ifdef ifndef endif undef pragma NULL size_t uint8_t uint32_t int64_t printf malloc free memcpy"""

KEYWORDS: dict[str, frozenset[str]] = {
    "python": _words("""False None True and as assert async await break class continue def del elif else except
        finally for from global if import in is lambda nonlocal not or pass raise return try while with yield
        self cls print len range isinstance dict list tuple str int super kwargs args __init__ __name__"""),
    "c": _words(_C),
    "cpp": _words(
        _C
        + """ bool true false class namespace template typename public private protected virtual
        override final operator new delete this try catch throw using nullptr constexpr noexcept explicit friend
        mutable decltype static_cast dynamic_cast reinterpret_cast const_cast std vector string unique_ptr
        shared_ptr cout endl"""
    ),
    "javascript": _words("""break case catch class const continue debugger default delete do else export extends
        finally for function if import in instanceof let new return super switch this throw try typeof var void
        while with yield async await null undefined true false document window console prototype require module
        exports JSON Promise addEventListener querySelector getElementById"""),
    "typescript": _words("""break case catch class const continue default delete do else export extends finally
        for function if import in instanceof let new return super switch this throw try typeof var void while
        async await null undefined true false interface type enum implements namespace declare readonly private
        public protected abstract keyof any unknown never string number boolean"""),
    "html": _words("""html head body div span p a href src img script style link meta title class id table tr
        td th thead tbody ul ol li form input button label select option textarea br hr h1 h2 h3 h4 nav header
        footer section article main rel type name value alt width height charset doctype iframe strong em"""),
    "css": _words("""color background background-color margin padding border display position width height font
        font-size font-weight font-family text-align text-decoration line-height float top left right bottom
        z-index overflow opacity cursor important none block inline inline-block flex grid solid auto hover
        before after media px rem em transparent rgba relative absolute fixed bold center"""),
    "rust": _words("""as break const continue crate else enum extern false fn for if impl in let loop match mod
        move mut pub ref return self Self static struct super trait true type unsafe use where while async await
        dyn Option Some None Result Ok Err Vec String Box println macro_rules usize isize u8 u16 u32 u64 i32 i64
        f64 str derive unwrap"""),
    "go": _words("""break case chan const continue default defer else fallthrough for func go goto if import
        interface map package range return select struct switch type var nil true false err fmt make len append
        string int error"""),
    "java": _words("""abstract assert boolean break byte case catch char class const continue default do double
        else enum extends final finally float for goto if implements import instanceof int interface long native
        new package private protected public return short static super switch synchronized this throw throws
        try void volatile while null true false String System println Override"""),
    "english": _words("""the of and to a in is that it for on was with as be by this are or not from at which but
        have an they you he his her we can all more one has were their will been would there if its also so what
        about some other than into only them may no when who these out could such up how like then any each most
        use used many very first new after should because between through where while both those same well just
        over under before because people time year way work make made know see good great"""),
}

CASE_INSENSITIVE = frozenset({"html", "english"})
