"""Language names: ISO 639-1 code, English name, and the other names users type.

Covers every language the offline detector (py3langid) knows. The aliases are what people
write after `/lang` or `/translate to`: the native name, common English variants, and the
ISO 639-2 codes (`deu`, `ger`) some people know from subtitles and config files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

# code: (English name, *aliases). Aliases are matched case- and accent-insensitively.
_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("af", ("Afrikaans", "afr")),
    ("am", ("Amharic", "አማርኛ", "amh")),
    ("an", ("Aragonese", "aragonés", "arg")),
    ("ar", ("Arabic", "العربية", "عربي", "ara", "arb")),
    ("as", ("Assamese", "অসমীয়া", "asm")),
    ("az", ("Azerbaijani", "azərbaycan", "azeri", "aze")),
    ("ba", ("Bashkir", "башҡорт", "bak")),
    ("be", ("Belarusian", "беларуская", "bel")),
    ("bg", ("Bulgarian", "български", "bul")),
    ("bn", ("Bengali", "বাংলা", "bangla", "ben")),
    ("br", ("Breton", "brezhoneg", "bre")),
    ("bs", ("Bosnian", "bosanski", "bos")),
    ("ca", ("Catalan", "català", "cat")),
    ("cs", ("Czech", "čeština", "česky", "ces", "cze")),
    ("cy", ("Welsh", "cymraeg", "cym", "wel")),
    ("da", ("Danish", "dansk", "dan")),
    ("de", ("German", "deutsch", "allemand", "alemán", "deu", "ger")),
    ("dz", ("Dzongkha", "རྫོང་ཁ", "dzo")),
    ("el", ("Greek", "ελληνικά", "ell", "gre")),
    ("en", ("English", "anglais", "inglés", "englisch", "eng")),
    ("eo", ("Esperanto", "epo")),
    ("es", ("Spanish", "español", "castellano", "espagnol", "spanisch", "spa")),
    ("et", ("Estonian", "eesti", "est")),
    ("eu", ("Basque", "euskara", "eus", "baq")),
    ("fa", ("Persian", "فارسی", "farsi", "fas", "per")),
    ("ff", ("Fula", "fulfulde", "fulani", "ful")),
    ("fi", ("Finnish", "suomi", "fin")),
    ("fo", ("Faroese", "føroyskt", "fao")),
    ("fr", ("French", "français", "francais", "französisch", "francés", "fra", "fre")),
    ("fy", ("Western Frisian", "frisian", "frysk", "fry")),
    ("ga", ("Irish", "gaeilge", "gle")),
    ("gd", ("Scottish Gaelic", "gaelic", "gàidhlig", "gla")),
    ("gl", ("Galician", "galego", "glg")),
    ("gn", ("Guarani", "avañe'ẽ", "grn")),
    ("gu", ("Gujarati", "ગુજરાતી", "guj")),
    ("ha", ("Hausa", "hau")),
    ("he", ("Hebrew", "עברית", "heb", "iw")),
    ("hi", ("Hindi", "हिन्दी", "हिंदी", "hin")),
    ("hr", ("Croatian", "hrvatski", "hrv")),
    ("ht", ("Haitian Creole", "kreyòl ayisyen", "hat")),
    ("hu", ("Hungarian", "magyar", "hun")),
    ("hy", ("Armenian", "հայերեն", "hye", "arm")),
    ("id", ("Indonesian", "bahasa indonesia", "indonesia", "ind", "in")),
    ("ig", ("Igbo", "ibo")),
    ("is", ("Icelandic", "íslenska", "isl", "ice")),
    ("it", ("Italian", "italiano", "italien", "italienisch", "ita")),
    ("ja", ("Japanese", "日本語", "にほんご", "nihongo", "jpn")),
    ("jv", ("Javanese", "basa jawa", "jav")),
    ("ka", ("Georgian", "ქართული", "kat", "geo")),
    ("ki", ("Kikuyu", "gĩkũyũ", "kik")),
    ("kk", ("Kazakh", "қазақ", "қазақша", "kaz")),
    ("km", ("Khmer", "ខ្មែរ", "khm")),
    ("kn", ("Kannada", "ಕನ್ನಡ", "kan")),
    ("ko", ("Korean", "한국어", "조선말", "kor")),
    ("ku", ("Kurdish", "kurdî", "کوردی", "kur")),
    ("ky", ("Kyrgyz", "кыргызча", "kir")),
    ("la", ("Latin", "latina", "lat")),
    ("lb", ("Luxembourgish", "lëtzebuergesch", "ltz")),
    ("lg", ("Ganda", "luganda", "lug")),
    ("ln", ("Lingala", "lingála", "lin")),
    ("lo", ("Lao", "ລາວ", "lao")),
    ("lt", ("Lithuanian", "lietuvių", "lit")),
    ("lv", ("Latvian", "latviešu", "lav")),
    ("mg", ("Malagasy", "mlg")),
    ("mk", ("Macedonian", "македонски", "mkd", "mac")),
    ("ml", ("Malayalam", "മലയാളം", "mal")),
    ("mn", ("Mongolian", "монгол", "mon")),
    ("mr", ("Marathi", "मराठी", "mar")),
    ("ms", ("Malay", "bahasa melayu", "melayu", "msa", "may")),
    ("mt", ("Maltese", "malti", "mlt")),
    ("my", ("Burmese", "မြန်မာ", "myanmar", "mya", "bur")),
    ("ne", ("Nepali", "नेपाली", "nep")),
    ("nl", ("Dutch", "nederlands", "flemish", "vlaams", "nld", "dut")),
    ("nn", ("Norwegian Nynorsk", "nynorsk", "nno")),
    ("no", ("Norwegian", "norsk", "bokmål", "nb", "nob", "nor")),
    ("oc", ("Occitan", "occitan", "oci")),
    ("om", ("Oromo", "afaan oromoo", "orm")),
    ("or", ("Odia", "ଓଡ଼ିଆ", "oriya", "ori")),
    ("pa", ("Punjabi", "ਪੰਜਾਬੀ", "panjabi", "pan")),
    ("pl", ("Polish", "polski", "pol")),
    ("ps", ("Pashto", "پښتو", "pus")),
    ("pt", ("Portuguese", "português", "portugues", "portugais", "portugiesisch", "por")),
    ("qu", ("Quechua", "runa simi", "que")),
    ("ro", ("Romanian", "română", "ron", "rum")),
    ("ru", ("Russian", "русский", "русский язык", "russe", "russisch", "rus")),
    ("rw", ("Kinyarwanda", "ikinyarwanda", "kin")),
    ("sa", ("Sanskrit", "संस्कृतम्", "san")),
    ("se", ("Northern Sami", "sámegiella", "sme")),
    ("si", ("Sinhala", "සිංහල", "sinhalese", "sin")),
    ("sk", ("Slovak", "slovenčina", "slk", "slo")),
    ("sl", ("Slovenian", "slovenščina", "slovene", "slv")),
    ("sn", ("Shona", "chishona", "sna")),
    ("so", ("Somali", "soomaali", "som")),
    ("sq", ("Albanian", "shqip", "sqi", "alb")),
    ("sr", ("Serbian", "српски", "srpski", "srp")),
    ("st", ("Southern Sotho", "sesotho", "sot")),
    ("sv", ("Swedish", "svenska", "swe")),
    ("sw", ("Swahili", "kiswahili", "swa")),
    ("ta", ("Tamil", "தமிழ்", "tam")),
    ("te", ("Telugu", "తెలుగు", "tel")),
    ("tg", ("Tajik", "тоҷикӣ", "tgk")),
    ("th", ("Thai", "ไทย", "ภาษาไทย", "tha")),
    ("tk", ("Turkmen", "türkmençe", "tuk")),
    ("tl", ("Tagalog", "filipino", "fil", "tgl")),
    ("tr", ("Turkish", "türkçe", "tur")),
    ("tt", ("Tatar", "татар", "tat")),
    ("ug", ("Uyghur", "ئۇيغۇرچە", "uighur", "uig")),
    ("uk", ("Ukrainian", "українська", "ukr")),
    ("ur", ("Urdu", "اردو", "urd")),
    ("uz", ("Uzbek", "oʻzbekcha", "o'zbek", "uzb")),
    ("vi", ("Vietnamese", "tiếng việt", "vie")),
    ("vo", ("Volapük", "vol")),
    ("wa", ("Walloon", "walon", "wln")),
    ("xh", ("Xhosa", "isixhosa", "xho")),
    ("yo", ("Yoruba", "yorùbá", "yor")),
    ("zh", ("Chinese", "中文", "汉语", "漢語", "华语", "普通话", "mandarin", "zho", "chi", "cmn")),
    ("zu", ("Zulu", "isizulu", "zul")),
)

NAMES: Mapping[str, str] = MappingProxyType({code: names[0] for code, names in _ROWS})
ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({c: n for c, n in _ROWS})

# Detector labels that are dialects or close relatives of a listed language: their score is
# added to that language's, so "مرحبا" split between ar/ary/arz still reads as Arabic.
FOLDED: Mapping[str, str] = MappingProxyType(
    {
        "ary": "ar",
        "arz": "ar",
        "wuu": "zh",
        "yue": "zh",
        "uzs": "uz",
        "sdh": "ku",
        "hbo": "he",
        "grc": "el",
        "pcm": "en",
        "ext": "es",
        "gcf": "fr",
        "gcr": "fr",
        "lij": "it",
        "vec": "it",
        "ltg": "lv",
        "kik": "ki",
        "fuv": "ff",
        "gug": "gn",
    }
)


# A language tag as settings and sites take it: an ISO 639 code, perhaps with a region or
# script ("en", "pt-BR", "zh-Hans").
_TAG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")


def language_problem(tag: str) -> str | None:
    """Why `tag` is not a language Parley knows (None when it is one)."""
    if not _TAG.fullmatch(tag):
        return f"not a language tag: {tag[:100]!r} (e.g. en, pt-BR)"
    if tag.split("-", 1)[0] not in NAMES:
        return f"unknown language: {tag[:100]!r} (e.g. en, pt-BR)"
    return None
