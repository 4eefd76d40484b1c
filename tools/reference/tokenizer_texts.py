"""Test texts for the tokenizer goldens (tests/golden/tokenizer/encodings.jsonl).

The list is built deterministically (fixed seed) so that reruns give the same
file. It covers the cases where byte-level BPE with the LLaMA-3 pre-tokenizer
is easy to get wrong in C: the regex alternatives (contractions, letter runs
with one leading non-letter, 1-3 digit runs, punctuation runs with trailing
newlines, whitespace before newlines, whitespace not followed by a non-space),
Unicode categories (\\p{L}, \\p{N}, marks, emoji), CR/LF handling and
added-token matching.
"""

import random

SPECIAL_STRINGS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
    "<|reserved_special_token_0|>", "<|finetune_right_pad_id|>",
    "<image_start>", "<image_end>",
]


def _base_texts():
    t = []
    # --- trivial ---
    t += ["", " ", "  ", "\t", "\n", "\r", "\r\n", "a", "A", "0", ".", "'", "''",
          "'s", "'S", " 's", "x y", " x", "x ", "\n\n", " \n", "\n ", "\t\n", "  \n\n  "]
    # --- English ---
    t += [
        "Hello, world!",
        "Hello world",
        " Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
        "Once upon a time",
        "Once upon a time, in a small village by the sea, there lived an old fisherman.",
        "What is the capital of France? The capital of France is Paris.",
        "Please describe this image in detail.",
        "Draw a cat sitting on a red chair.",
        "I think, therefore I am.",
        "e.g. i.e. etc. Mr. Smith vs. Dr. Jones",
        "The serving system reads a model directory and maps the weights into memory.",
        "Supercalifragilisticexpialidocious",
        "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
        "a" * 200,
        "ab" * 150,
        "Hello" * 40,
        "x" * 1000,
        "The" + "very" * 60 + "long word",
        "tokenization tokenizer tokenizers tokenize tokenized",
        "unbelievable, unbelievably, disbelief",
        "CamelCaseIdentifierWithManyParts and snake_case_identifier_with_parts",
        "HTTPServerError XMLHttpRequest iPhone eBay McDonald's",
    ]
    # --- contractions ---
    t += [
        "it's you're we've I'm they'll she'd can't won't",
        "IT'S YOU'RE WE'VE I'M THEY'LL SHE'D CAN'T WON'T",
        "DON'T", "don't", "Don't", "it'S", "It'S", "iT's", "we'Re", "WE'rE", "they'Ll", "I'D", "you'VE",
        "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D", "'Re 'Ve 'Ll", "'rE 'vE 'lL",
        "x'sy", "x'Sy", "'sss", "'llama", "'LLAMA", "rock'n'roll", "O'Neill's", "the '90s",
        "John's book and JOHN'S BOOK", "he said 'hello' and 'GOODBYE'",
        "'' '''' 'x' ' s", "can' t", "it ' s", "it''s", "l'été l'Été L'ÉTÉ",
        "’s curly apostrophe ’S isn’t matched", "`s ´s",
    ]
    # --- digits ---
    t += [
        "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
        "3.14159265358979323846", "1,000,000", "1 000 000", "-42", "+7", "0x1F 0b1010 0o17",
        "2024-01-15T10:30:00Z", "v1.2.3", "a1b2c3", "abc123def456", "123abc", "1st 2nd 3rd 4th 21st",
        "9" * 100, "0" * 37, "1234567890" * 5,
        "Arabic-Indic digits: ٠١٢٣٤٥٦٧٨٩ and ١٢٣٤٥",
        "Extended Arabic-Indic: ۰۱۲۳۴۵۶۷۸۹",
        "Devanagari digits: ०१२३४५६७८९",
        "Bengali ০১২৩ Thai ๐๑๒๓ Fullwidth ０１２３４５６７８９",
        "Roman numerals Ⅰ Ⅱ Ⅲ Ⅻ ⅻ and circled ① ② ③ ⑩",
        "superscripts x² y³ z¹⁰ fractions ½ ¾ ⅓",
        "mixed 12٣4 ۵6 ٠0٠",
        "12345٠١٢٣٤٥",
    ]
    # --- whitespace ---
    t += [
        "two  spaces", "three   spaces", "tab\tseparated\tvalues", "tab\t\ttwice",
        "   leading spaces", "\t\tleading tabs", "trailing spaces   ", "trailing tabs\t\t",
        "line one\nline two", "line one\n\nline three", "line one\n\n\n\nline five",
        "spaces before newline   \nnext", "tab before newline\t\nnext", "  \n  \n  ",
        "mixed \t \t whitespace", " \t\n\r\n\t ", "word \n word", "word\n word", "word \nword",
        "CRLF\r\nline\r\nendings\r\n", "lone\rcarriage\rreturn", "mixed\r\n\n\r\rend",
        "\r\n\r\n", "a\r\n\r\nb", "a \r\n b", "end with CR\r", "\rstart with CR",
        "indent\n    four\n        eight\n\ttab", "x" + " " * 50 + "y", " " * 33, "\t" * 9,
        "a\u00a0b non-breaking space", "ideographic\u3000space", "en\u2002space em\u2003space",
        "zero\u200bwidth\u200bspace", "line\u2028separator", "vertical\u000btab form\u000cfeed",
        "next\u0085line",
    ]
    # --- punctuation ---
    t += [
        "!!!", "???", "...", "?!?!", "!!!\n", "...\n\n", "--->", "<==>", "***bold***", "___",
        "Hello!!! How are you???", "Wait... what?!", "(a) [b] {c} <d>", "a.b.c.d", "foo(bar(baz()))",
        " ...\r\n", ":-) :-( ;-) :D", "#hashtag @mention $var %mod ^caret &amp *star",
        "«quotes» „Anführungszeichen“ “curly” ‘single’", "— – - ‐ dashes", "…ellipsis…",
        "¿¡Spanish!?", "。、！？「」『』（）", "~!@#$%^&*()_+-=`[]\\{}|;':\",./<>?",
    ]
    # --- code ---
    t += [
        "def main():\n    print(\"hello\")\n",
        "def f(x, y=2, *args, **kwargs):\n\treturn x ** y  # power\n",
        "for i in range(10):\n    if i % 2 == 0:\n        continue\n    print(f\"{i=}\")\n",
        "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n\n    def __init__(self):\n        super().__init__()\n",
        "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)\n",
        "lambda x: x[::-1] if x else None",
        "#include <stdio.h>\nint main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
        "static inline float rmsnorm(const float *x, int n) { float s = 0.0f; for (int i = 0; i < n; i++) s += x[i] * x[i]; return 1.0f / sqrtf(s / n + 1e-5f); }",
        "if (a && b || !c) { x <<= 2; y >>= 1; z ^= ~w; }",
        "ptr->next->prev = NULL; arr[i][j] += *p++;",
        "/* block comment */ // line comment\n#define MAX(a, b) ((a) > (b) ? (a) : (b))",
        "{\"key\": \"value\", \"number\": 42, \"list\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
        "{\n  \"model_type\": \"llama\",\n  \"hidden_size\": 4096,\n  \"rope_scaling\": {\"factor\": 8.0}\n}",
        "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]",
        "SELECT * FROM users WHERE id = 1;",
        "<div class=\"a\"><span>text</span></div>",
        "$ echo \"$HOME\" | grep -v '^#' > /dev/null 2>&1",
        "https://example.com/path?query=1&b=2#frag",
        "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
        "    \n    \n",
        "\tif (x) {\r\n\t\treturn;\r\n\t}\r\n",
    ]
    # --- CJK and other scripts ---
    t += [
        "人工智能正在改变世界。", "你好，世界！", "这个模型可以理解图片，也可以生成图片。",
        "今日はいい天気ですね。", "東京は日本の首都です。", "カタカナ ひらがな 漢字",
        "안녕하세요. 한국어를 공부하고 있어요.", "中文English混合text123数字",
        "日本語とEnglishの混在", "𠮷野家 (a supplementary-plane CJK character)",
        "Привет, мир! Москва — столица России.", "СЪЕШЬ ЖЕ ЕЩЁ ЭТИХ МЯГКИХ ФРАНЦУЗСКИХ БУЛОК",
        "नमस्ते दुनिया। मेरा नाम राम है।", "क्षत्रिय द्वार ज्ञान श्री",
        "مرحبا بالعالم. اللغة العربية جميلة.", "שלום עולם", "สวัสดีครับ", "Ελληνικά: Καλημέρα κόσμε.",
        "Tiếng Việt: Hà Nội, cảm ơn", "ქართული ენა", "Հայերեն", "ᏣᎳᎩ", "ܐܪܡܝܐ", "ትግርኛ",
    ]
    # --- accented Latin and combining marks ---
    t += [
        "Größe, Straße, Äpfel, Übung, Öl", "Ça va? Très bien. L'été à Paris.", "¿Dónde está la estación?",
        "São Paulo, ação, coração", "Dvořák, Łódź, Kraków, Škoda", "Ærøskøbing, Þórr, ð",
        "e\u0301 (e + combining acute) vs \u00e9 (precomposed)", "n\u0303o\u0308\u0301 stacked marks",
        "Z\u0351\u0357\u0308a\u0310\u0352l\u0313g\u030a\u0351o zalgo", "\u0301 leading combining mark",
        "a\u0300\u0301\u0302\u0303\u0304", "ﬁ ﬂ ligatures", "Ａ Ｂ Ｃ fullwidth latin", "İstanbul ıi",
        "ß ẞ ss SS", "ǅ ǈ ǋ titlecase digraphs", "𝐁𝐨𝐥𝐝 𝕄𝕒𝕥𝕙",
    ]
    # --- emoji ---
    t += [
        "😀", "😀😃😄", "I ❤️ this 🎉🎉🎉", "👍 👍🏻 👍🏼 👍🏽 👍🏾 👍🏿",
        "👨‍👩‍👧‍👦 family", "👩🏽‍💻 technologist", "🏳️‍🌈 flag", "🇫🇷🇯🇵 flags",
        "#️⃣ keycap 1️⃣", "🧑🏿‍🤝‍🧑🏻", "❤️‍🔥", "text😀text", "emoji at end 🚀",
        "🚀🚀🚀 rockets\n🌅 sunset", "☺ ☺️ ♥ ♥️ (variation selectors)", "\U0001FAE0 newer emoji",
    ]
    # --- special-token strings (added tokens) ---
    t += [
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\nHello<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n",
        "text before<|eot_id|>text after",
        "<|eot_id|><|eot_id|>",
        " <|eot_id|> ",
        "\n<|eot_id|>\n",
        "<|end_of_text|>",
        "<image_start>",
        "<image_end>",
        "<image_start><image_end>",
        "Here is the picture: <image_start><image_end>\nWhat is it?",
        "<image_start>\n<image_end>",
        "a<image_start>b<image_end>c",
        "<|eot_id>", "<|eot_id|", "<eot_id|>", "<|EOT_ID|>", "<image_start", "<image>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_999|>",
        "<|python_tag|>print(1)<|eom_id|>",
        "<|finetune_right_pad_id|>",
        "<<|eot_id|>>",
        "<|begin_of_text|><|begin_of_text|>",
    ]
    return t


def _generated_texts(rng):
    """Seeded random mixtures that stress the regex alternatives."""
    pools = {
        "lower": "abcdefghijklmnopqrstuvwxyz",
        "upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "digit": "0123456789",
        "udigit": "٠١٢٣٤٥٦٧٨٩۰۱۲०१२３４½²",
        "space": "  \t",
        "nl": "\n\r",
        "punct": ".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`\"'",
        "apos": "'",
        "accent": "éèêëàâäôöûüçñßÉÀÖÜ",
        "cjk": "人工智能世界你好日本語東京カタナひらが한국어",
        "cyr": "приветмирПРИВЕТ",
        "deva": "नमस्तेदुनिया",
        "mark": "\u0301\u0308\u0327\u093f",
        "emoji": ["😀", "👍🏽", "👨‍👩‍👧", "🚀", "❤️", "🇫🇷"],
        "contr": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Re", "'lL"],
    }
    keys = sorted(pools)
    out = []
    for _ in range(110):
        n = rng.randint(1, 14)
        parts = []
        for _ in range(n):
            k = rng.choice(keys)
            pool = pools[k]
            m = rng.randint(1, 6) if k not in ("emoji", "contr") else rng.randint(1, 2)
            parts.append("".join(rng.choice(pool) for _ in range(m)))
        out.append("".join(parts))
    # words with whitespace patterns
    words = ["hello", "World", "it's", "DON'T", "123", "4567", "日本", "мир", "😀", "x", ".", "!!", "ﬁ"]
    seps = [" ", "  ", "\t", "\n", " \n", "\n ", "\r\n", "\r", "   \n\n", "\t \n", ""]
    for _ in range(40):
        n = rng.randint(2, 7)
        s = rng.choice(["", " ", "\t", "\n", "  "])
        for i in range(n):
            s += rng.choice(words)
            if i < n - 1:
                s += rng.choice(seps)
        s += rng.choice(["", " ", "  ", "\n", "\t", "\r\n"])
        out.append(s)
    # long digit runs of every length 1..40 in context
    for L in range(1, 41, 3):
        out.append("n=" + "".join(rng.choice("0123456789") for _ in range(L)) + "!")
    return out


def all_texts():
    rng = random.Random(20240601)
    texts = _base_texts() + _generated_texts(rng)
    seen = set()
    uniq = []
    for s in texts:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def contains_special(text):
    return any(s in text for s in SPECIAL_STRINGS)


if __name__ == "__main__":
    ts = all_texts()
    print(len(ts))
