"""The no-model path of "the customer asks for a person": phrase patterns in every language
Parley has a locale for (bot/locale/*.toml, and English), and the operator's keyword rules.

The patterns look for the request, not the word: "are you a human?" is not one, "I want to
talk to a human" is. With a model, the intent router may recognise other wordings
(TurnSignals.wants_human).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable

# One alternation per language; matched case-insensitively anywhere in the message.
HUMAN_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        r"\b(?:talk|speak|chat)\s+(?:to|with)\s+(?:a|an|the|some|your)?\s*(?:real\s+|live\s+)?"
        r"(?:person|human|agent|representative|operator|someone|somebody|anyone|anybody|people"
        r"|staff)\b",
        r"\b(?:real|live)\s+(?:person|human|agent)\b",
        r"\bhuman\s+(?:being|agent|support)\b",
        # "Is there a human I can talk to?", "Isn't there someone (anyone) I can speak with?"
        r"\b(?:(?:a|an|some|no)\s+(?:real\s+|live\s+|actual\s+)?(?:person|human|agent|representative"
        r"|operator)|someone|somebody|anyone|anybody|no\s+one|nobody)\s+(?:i|we)\s+(?:can|could|may|might)\s+(?:talk|speak|chat)"
        r"\s+(?:to|with)\b",
        r"\b(?:get|give|connect|transfer)\s+me\s+(?:to\s+)?(?:a|an)\s+(?:person|human|agent)\b",
        # "not the bot, a human": the person asked for instead of the bot.
        r"\bnot\s+(?:a|the|your|this)?\s*(?:bot|chatbot|robot|machine|ai|computer)\W+(?:but\s+)?"
        r"(?:a|an)?\s*(?:real\s+|live\s+|actual\s+)?(?:human|person|agent)\b",
    ),
    "de": (
        r"\bmit\s+(?:einem|einer|jemandem|ihrem|eurem)?\s*(?:echten\s+|richtigen\s+)?"
        r"(?:menschen|person|mitarbeiter\w*|berater\w*|agent\w*|kundenberater\w*)\b",
        r"\b(?:echte[nrm]?|richtige[nrm]?)\s+(?:menschen|person|mitarbeiter\w*)\b",
        r"\bmit\s+jemandem\s+(?:sprechen|reden)\b",
    ),
    "fr": (
        r"\bparler\s+(?:à|a|avec)\s+(?:quelqu.un|(?:un|une|le|la)\s+(?:vrai\w*\s+)?"
        r"(?:humain|personne|conseill\w+|agent|opérat\w+|être\s+humain))",
        r"\b(?:vraie|vrai)\s+personne\b",
        r"\bun\s+(?:conseiller|humain|être humain)\b",
    ),
    "es": (
        r"\bhablar\s+con\s+(?:una\s+persona|un\s+humano|alguien|un\s+agente|un\s+operador"
        r"|un\s+asesor|una\s+persona\s+real)",
        r"\bpersona\s+(?:real|de\s+verdad)\b",
        r"\bagente\s+humano\b",
    ),
    "it": (
        r"\bparlare\s+con\s+(?:una\s+persona|un\s+operatore|un\s+umano|qualcuno"
        r"|un\s+essere\s+umano|un\s+consulente|un\s+addetto)",
        r"\bpersona\s+(?:vera|reale)\b",
        r"\bessere\s+umano\b",
    ),
    "pt": (
        r"\bfalar\s+com\s+(?:uma\s+pessoa|um\s+humano|algu[eé]m|um\s+atendente|um\s+agente"
        r"|um\s+operador|um\s+ser\s+humano)",
        r"\bpessoa\s+(?:real|de\s+verdade)\b",
        r"\batendente\s+humano\b",
    ),
    "nl": (
        r"\bmet\s+(?:een|iemand)\s*(?:echte?\s+)?(?:mens|persoon|medewerker)?\s*"
        r"(?:spreken|praten)\b",
        r"\bmet\s+een\s+(?:echte?\s+)?(?:mens|persoon|medewerker)\b",
        r"\becht(?:e)?\s+(?:mens|persoon)\b",
    ),
    "pl": (
        r"\bz\s+(?:człowiekiem|konsultantem|konsultantką|prawdziwą\s+osobą|żywym\s+człowiekiem"
        r"|agentem|pracownikiem|osobą)",
    ),
    "ru": (
        r"\bс\s+(?:живым\s+)?(?:человеком|оператором|менеджером|сотрудником|консультантом)",
        r"\bживо(?:й|го|му)\s+человек",
    ),
    "uk": (
        r"\bз\s+(?:живою\s+)?(?:людиною|оператором|менеджером|консультантом|працівником)",
        r"\bжив(?:а|ою|ої)\s+людин",
    ),
    "tr": (
        r"\b(?:insanla|kişiyle|temsilciyle|yetkiliyle|operatörle|biriyle)\s+"
        r"(?:konuş|görüş)",
        r"\bgerçek\s+bir\s+(?:insan|kişi)",
        r"\bmüşteri\s+temsilci",
        # "temsilci istiyorum": the person wanted, the verb after it.
        r"\b(?:bir\s+)?(?:temsilci|yetkili|operatör)\s+(?:istiyorum|isterim|rica\s+ediyorum)\b",
    ),
    "ar": (
        r"(?:مع|إلى|الى)\s+(?:شخص|إنسان|انسان|موظف|ممثل|وكيل|أحد)",
        r"(?:إنسان|انسان|شخص)\s+حقيقي",
        r"خدمة\s+العملاء",
        # Levantine and Egyptian: "بدي احكي مع حدا", "عايز اكلم حد", "عاوز موظف".
        r"(?:احكي|أحكي|نحكي|اكلم|أكلم|نكلم|اتكلم|أتكلم)\s+(?:مع\s+)?(?:حدا|حد|موظف|شخص|إنسان|انسان)"
        r"(?!\w)",
        # The verb of wanting out of the match (a lookbehind), as in WANT_PERSON_IN: the words
        # before it are read ("مش عاوز موظف" wants none, "لا عاوز موظف" is "no, I want one").
        r"(?:(?<=بدي )|(?<=بدنا )|(?<=عايز )|(?<=عاوز )|(?<=عايزة )|(?<=عاوزة )|(?<=أريد )"
        r"|(?<=اريد ))(?:موظف|إنسان|انسان)(?!\w)",
    ),
    "zh": (r"人工客服|转人工|人工服务|真人|客服人员|和人说话|跟人说话|找客服",),
    "ja": (r"人間と|オペレーター|担当者|有人対応|人と話",),
}


def _alone(words: str, please: str, article: str = "", real: str = "") -> str:
    """A message that is only the request: a word for a person ("human", "agent",
    "Mitarbeiter", "оператор"), with an article, "real", and "please" either side at most:
    what customers of support chats type most to reach one ("are you a human?" is more)."""
    article = f"(?:(?:{article})\\s+)?" if article else ""
    real = f"(?:(?:{real})\\s+)?" if real else ""
    return rf"^\W*(?:(?:{please})\W+)?{article}{real}(?:{words})(?:\W+(?:{please}))?\W*$"


# Per language: the words for a person that alone ask for one, "please", articles, "real".
ALONE: dict[str, tuple[str, ...]] = {
    "en": (
        r"humans?|person|agent|operator|representative|rep|someone|somebody|support agent",
        r"please|pls|plz|now", r"a|an|the|some|your", r"real|live|actual",
    ),
    "de": (
        r"mensch(?:en)?|mitarbeiter(?:in)?|berater(?:in)?|kundenberater(?:in)?|kundendienst",
        r"bitte|jetzt", r"ein|eine|einen", r"echte[nr]?|richtige[nr]?",
    ),
    # "personne" alone is "nobody" ("Personne." to "who else uses the account?"): a person
    # only with "une" or "vraie" before it.
    "fr": (
        r"humain|une\s+(?:vraie\s+)?personne|vraie\s+personne"
        r"|conseill(?:er|ère)|agent|opérat(?:eur|rice)|quelqu.un",
        r"svp|stp|s.il vous plaît|s.il te plaît", r"un|une", r"vrai|vraie",
    ),
    "es": (r"humano|persona|agente|operador(?:a)?|asesor(?:a)?", r"por favor", r"un|una", ""),
    "it": (
        r"umano|persona|operat(?:ore|rice)|consulente", r"per favore|per piacere", r"un|una", "",
    ),
    "pt": (r"humano|pessoa|atendente|operador(?:a)?|agente", r"por favor", r"um|uma", ""),
    "nl": (r"mens|persoon|medewerker", r"alsjeblieft|alstublieft|aub|graag", r"een", r"echte?"),
    "pl": (r"człowiek(?:a)?|konsultant(?:a|ka)?|operator(?:a)?", r"proszę", "", r"żywy|żywego"),
    "ru": (r"оператор(?:а)?|человек(?:а)?|менеджер(?:а)?|консультант(?:а)?", r"пожалуйста", "",
           r"живой|живого"),
    "uk": (r"оператор(?:а)?|людин(?:а|у)|менеджер(?:а)?|консультант(?:а)?", r"будь ласка", "",
           r"жива|живу|живий"),
    "tr": (r"temsilci|insan|operatör|yetkili|müşteri temsilcisi", r"lütfen", "", r"gerçek"),
    "ar": (r"موظف|إنسان|انسان|شخص", r"من فضلك|لو سمحت", "", ""),
    "zh": (r"人工|真人|客服", r"请|麻烦", "", ""),
    "ja": (r"人間|オペレーター|担当者", r"お願いします", "", ""),
}  # fmt: skip
# "I want / need a human", "can I get an agent": the word ends the request (the message, a
# punctuation mark, or a word such as "please", "now", "to", "because" after it). Followed
# by a hyphen, an apostrophe or another noun it names something else: "a person's address",
# "a human-readable copy", "an agent license", "a representative sample".
WANT_PERSON = (
    r"\b(?:i\s+(?:really\s+)?(?:want|need|would\s+like)|i.d\s+like|can\s+i\s+(?:get|have)"
    r"|could\s+i\s+(?:get|have)|get\s+me|give\s+me)\s+(?:a|an|some|your)\s+"
    r"(?:real\s+|live\s+|actual\s+)?(?:human|person|agent|representative|operator)"
    r"(?=\W*$|\s*[.,!?;:…)(]|\s+(?:please|pls|plz|now|asap|right|instead|here|being|not|rather"
    r"|on|to|who|that|for|and|but|or|because|since|as|from|at|already|immediately|urgently"
    r"|thanks|thank|so|if|with|this|again)\b)"
)

# "Ich will einen Menschen", "quiero una persona", "voglio un operatore", "quero um atendente":
# the person wanted, the word ending the request (as WANT_PERSON in English; "ich brauche einen
# Berater für meine Steuer" asks for none). The verb of wanting stays out of the match (a
# lookbehind), so that a negation before it is read: "No quiero una persona" asks for none.
_WANT_END = (
    r"(?=\W*$|\s*[.,!?;:…)(]|\s+(?:bitte|jetzt|sofort|sprechen|por\s+favor|ya|ahora|per\s+favore"
    r"|subito|adesso|agora|já)\b)"
)
WANT_PERSON_IN: dict[str, str] = {
    "de": r"(?:(?<=will )|(?<=möchte )|(?<=brauche )|(?<=gerne )|(?<=gern ))(?:einen|eine)\s+"
          r"(?:echten\s+|richtigen\s+)?(?:menschen|mitarbeiter(?:in)?|berater(?:in)?)",
    "es": r"(?:(?<=quiero )|(?<=quisiera )|(?<=necesito ))"
          r"(?:una\s+persona|un\s+(?:humano|agente|operador|asesor))",
    "it": r"(?:(?<=voglio )|(?<=vorrei ))"
          r"(?:una\s+persona|un\s+(?:operatore|umano|consulente|addetto))",
    "pt": r"(?:(?<=quero )|(?<=queria )|(?<=preciso de ))"
          r"(?:uma\s+pessoa|um\s+(?:humano|atendente|agente|operador))",
}  # fmt: skip

# What negates a request said just before it, in the same clause: "I don't want to talk to a
# person", "Ich möchte nicht mit einem Menschen sprechen". Not "can't" ("why can't I talk to a
# person?" asks for one) nor a bare "no" ("is there no way to talk to a human?").
NEGATIONS: dict[str, str] = {
    "en": r"don.?t|do\s+not|doesn.?t|does\s+not|didn.?t|did\s+not|won.?t|wouldn.?t|would\s+not"
          r"|never|rather\s+not|no\s+need|not\s+(?:want|need|wish|like)",
    "de": r"nicht|kein\w*|nie|niemals",
    "fr": r"ne|pas|jamais",
    # Spanish "no" only before a verb of wanting: the English "no" ("is there no way to talk
    # to a human?") is no negation of the request.
    "es": r"no\s+(?:quiero|quisiera|necesito|deseo|me\s+hace\s+falta|hace\s+falta)|nunca",
    "it": r"non|mai",
    "pt": r"não|nao|nunca",
    "nl": r"niet|geen|nooit",
    "pl": r"nie",
    "ru": r"не|нет",
    "uk": r"не|ні",
    # Not "ما" alone ("what"), only before a verb of wanting. Not "لا" before the dialects'
    # wanting: there it is "no" ("لا بدي احكي مع حدا": no, I want to talk to someone); their
    # "don't want" is "ما بدي", "مش عايز".
    "ar": r"لا(?!\s+(?:بدي|بدنا|عايز|عاوز|عايزة|عاوزة)(?!\w))|لن|لست|ليس|مش|بدون|مابدي"
          r"|ما\s+(?:أريد|اريد|بدي|بدنا)",
}  # fmt: skip
_NEGATION = re.compile(r"(?<!\w)(?:" + "|".join(NEGATIONS.values()) + r")(?!\w)", re.I)
# The marks that end a clause, Latin, Arabic and CJK (full-width).
_CLAUSE_MARKS = ".,;:!?…،؛؟。，！？、；："
# Where the clause before a request starts: a punctuation mark, or "but" ("I don't know, but
# I want to talk to a person"; "I don't care but I want a human").
_CLAUSE = re.compile(
    rf"[{_CLAUSE_MARKS}]|(?<!\w)(?:but|aber|mais|pero|ma|mas|maar|ale|но|але|لكن|بل)(?!\w)",
    re.I,
)
# A question why one cannot reach a person asks for one ("warum kann ich nicht mit einem
# Menschen sprechen?").
_WHY = re.compile(r"(?<!\w)(?:why|warum|wieso|pourquoi|por\s+qué|perché|porque|waarom|почему|чому"
                  r"|لماذا)(?!\w)", re.I)  # fmt: skip
# A question whether one can reach a person asks for one: its negation is of the possibility,
# not of the wish ("Kann ich nicht mit einem Menschen sprechen?", "Je ne peux pas parler à
# quelqu'un ?", "Kan ik niet met een mens spreken?"). Read so only when a word of possibility
# stands among the words before the request and a question mark closes its clause, and no word
# of wanting follows the negation ("Can I say I don't want to talk to a person?" asks for none;
# nor does the statement "Ich kann nicht mit einem Menschen sprechen").
POSSIBLE: dict[str, str] = {
    "en": r"can|could|may|possible|able",
    "de": r"kann|kannst|können|könnt|könnte|könnten|möglich|darf|dürfen",
    "fr": r"peux|peut|pouvez|pouvons|pourrais|pourrait|pourriez|puis|possible|moyen",
    "es": r"puedo|puede|puedes|podemos|podría|podrías|posible",
    "it": r"posso|può|puoi|possiamo|potrei|potrebbe|possibile",
    "pt": r"posso|pode|podes|podemos|poderia|possível|possivel",
    "nl": r"kan|kun|kunt|kunnen|mag|mogen|mogelijk",
    "pl": r"mogę|moge|może|można|mozna|możliwe",
    "ru": r"могу|может|можно|нельзя|возможно",
    "uk": r"можу|може|можна|можливо",
}  # fmt: skip
_POSSIBLE = re.compile(r"(?<!\w)(?:" + "|".join(POSSIBLE.values()) + r")(?!\w)", re.I)
_WANTING = (
    "want wanna need wish like rather möchte möchten will wollte würde brauche gern gerne "
    "veux voudrais souhaite besoin quiero quería necesito voglio vorrei bisogno quero queria "
    "preciso wil wilde hoef graag chcę chce potrzebuję хочу хотел хотела нужно надо треба "
    "потрібно"
)
WANTING = frozenset(_WANTING.split())
# Chinese negates before the request, written without spaces: 不想, 不要, 不需要 and the words
# for reaching a person between ("我不想和人工客服说话", "别给我转人工"). Not 不能: "不能转人工吗？"
# asks for one.
_NEGATED_BEFORE_ZH = re.compile(
    r"(?:不想|不要|不用|不需要|不必|无需|无须|没必要|不愿意|别)"
    r"(?:和|跟|与|同|找|转|接|用|请|让|给|我|再|帮|要|去|被|说话|聊天?|联系|交流|沟通)*$"
)
# How far before a request a Chinese negation is looked for: searched through all the text
# before each request, a long message of requests took seconds.
ZH_NEGATION_CHARS = 20
# Japanese and Turkish negate after the request, as a suffix of its verb or a word after it
# ("人間と話したくない", "オペレーターは不要", "insanla konuşmak istemiyorum", "gerçek bir insan
# istemiyorum"). Not the negation of ability: "人間と話せないのですか？", "insanla konuşamaz
# mıyım?" ask for one. Each piece before the negation is read one way only ("話し" is 話 then し,
# never also 話し): a long run of them tried at every split took seconds per character. The
# Turkish suffix is bounded: all the words after every request, tried back, took seconds.
# "不要" ends its sentence: followed by more it is the Chinese "don't" of what follows
# ("我要真人不要机器人", "找客服不要等了" ask for one).
NEGATIONS_AFTER: dict[str, str] = {
    "ja": r"(?:[はとにをがもしする]|お?話|相談|電話|対応|代わって|つないで|繋いで)*"
          r"(?:たくない|たくありません|ほしくない|欲しくない|不要(?=です|でした|だ|で|な|\W|$)|いらない"
          r"|要らない|いりません|要りません|必要(?:は)?(?:ない|ありません)|結構です|けっこうです)",
    "tr": r"\w{0,24}(?:\s+(?:konuş|görüş|bağlan)\w*)?(?:\s+(?:hiç|asla|artık|kesinlikle|da|de))?\s+"
          r"(?:istemiyor\w*|istemem\w*|istemeyiz"
          r"|istemez\w*|gerek\s+yok|gerekmiyor\w*|gerekmez|lazım\s+değil|ihtiyac\w*\s+yok)",
}  # fmt: skip
_NEGATION_AFTER = re.compile("|".join(f"(?:{p})" for p in NEGATIONS_AFTER.values()), re.I)
# How many words before a request a negation of it may stand: "I really do not want to".
NEGATION_WORDS = 5
# The words that may stand between a negation and the request it negates: the wanting or
# talking it negates ("I don't want to talk to a person", "Nie chcę rozmawiać z konsultantem").
# Any other word means the negation was of something else, ending its own clause without a
# punctuation mark: "the app doesn't work I need a person", "das geht nicht ich will ...".
_NEGATED_WORDS = (
    "want wanna need wish like to really actually just even have be speak talk chat "
    "möchte möchten will wollte würde brauche muss gern gerne wirklich sprechen reden zu "
    "veux voudrais souhaite ai besoin de d parler vraiment "
    "quiero quería necesito hablar realmente "
    "voglio vorrei ho bisogno di parlare davvero "
    "quero queria preciso falar "
    "wil wilde hoef graag spreken praten "
    "chcę chce potrzebuję muszę rozmawiać porozmawiać mówić "
    "хочу хотел хотела нужно надо говорить разговаривать поговорить общаться "
    "треба потрібно говорити розмовляти поговорити "
    "أريد اريد أود اود أرغب ارغب أحتاج احتاج نريد نحتاج بحاجة بدي إلى الى التحدث الحديث التكلم "
    "الكلام أتحدث اتحدث أتكلم اتكلم التواصل أتواصل اتواصل حاجة داعي للتحدث للحديث للكلام للتواصل "
    "أن ان في بدي بدنا عايز عاوز عايزة عاوزة احكي أحكي نحكي اكلم أكلم نكلم"
)
NEGATED_WORDS = frozenset(_NEGATED_WORDS.split())

_HUMAN = re.compile(
    "|".join(
        [
            *(f"(?:{p})" for patterns in HUMAN_PHRASES.values() for p in patterns),
            WANT_PERSON,
            *(f"(?:{p}{_WANT_END})" for p in WANT_PERSON_IN.values()),
        ]
    ),
    re.I,
)
_ALONE = re.compile("|".join(f"(?:{_alone(*words)})" for words in ALONE.values()), re.I)
# Longest message read as a request alone ("a real person please, now!!!" fits).
ALONE_CHARS = 60


def asks_for_person(text: str) -> bool:
    """Whether the message asks to talk to a person, in any of the languages above."""
    # Each run of white space as one space: around the patterns' optional words (`\s*`
    # either side) a long run was tried at every split, seconds on the event loop.
    flat = " ".join(text.split())
    if len(flat) <= ALONE_CHARS and _ALONE.match(flat) is not None:
        return True
    read: _Reading | None = None  # built at the first request: most messages hold none
    for found in _HUMAN.finditer(flat):
        read = read or _Reading(flat)
        if not read.negated(found.start(), found.end()):
            return True
    return False


# How far before a request its last few words (NEGATION_WORDS) are looked for: enough for
# any words people write; the clause before a request was split out of all the text before it,
# for every request (a long message of negated requests read in quadratic time).
NEAR_CHARS = 300


class _Reading:
    """One message, its clause marks, "why"s and question marks found once, so that each
    request in it is read from the text near it (linear in the message, however many requests
    it holds): where its clause starts, whether a "why" stands in the clause, whether a
    question mark closes it."""

    def __init__(self, flat: str) -> None:
        self.flat = flat
        self.clause_ends = [m.end() for m in _CLAUSE.finditer(flat)]
        whys = list(_WHY.finditer(flat))
        self.why_starts = [m.start() for m in whys]
        self.why_ends = [m.end() for m in whys]
        self.marks = [i for i, char in enumerate(flat) if char in _CLAUSE_MARKS]

    def clause_start(self, at: int) -> int:
        """Where the clause holding the request that starts at `at` starts."""
        index = bisect_right(self.clause_ends, at) - 1
        return self.clause_ends[index] if index >= 0 else 0

    def why_between(self, start: int, end: int) -> bool:
        index = bisect_left(self.why_starts, start)
        return index < len(self.why_starts) and self.why_ends[index] <= end

    def asked(self, end: int) -> bool:
        """Whether the first clause mark after `end` is a question mark."""
        index = bisect_left(self.marks, end)
        return index < len(self.marks) and self.flat[self.marks[index]] in "?？؟"

    def near(self, clause: int, start: int) -> str:
        """The clause's last NEGATION_WORDS words before `start`, from NEAR_CHARS at most
        (a word cut at the window's edge left out)."""
        window = max(clause, start - NEAR_CHARS)
        words = self.flat[window:start].split()
        if window > clause and words and self.flat[window - 1] != " ":
            words = words[1:]
        return " ".join(words[-NEGATION_WORDS:])

    def negated(self, start: int, end: int) -> bool:
        """Whether the request at `start`..`end` is negated: a negation among the last
        few words of its clause, followed only by the wanting or talking it negates ("I don't
        want to talk to a person", "no need to speak to someone"; not "it doesn't work I want
        a person"), unless the clause asks whether one can; or a negation after it in
        Japanese and Turkish, before it in Chinese."""
        flat = self.flat
        if _NEGATION_AFTER.match(flat, end) or _NEGATED_BEFORE_ZH.search(
            flat[max(0, start - ZH_NEGATION_CHARS) : start]
        ):
            return True
        clause = self.clause_start(start)
        if self.why_between(clause, start):
            return False
        near = self.near(clause, start)
        asking = self.asked(end)
        for found in _NEGATION.finditer(near):
            negated = [word.strip("'’").lower() for word in near[found.end() :].split()]
            if all(word in NEGATED_WORDS for word in negated) and not (
                asking and WANTING.isdisjoint(negated) and _of_possibility(near, found)
            ):
                return True
        return False


def _of_possibility(near: str, negation: re.Match[str]) -> bool:
    """Whether `negation` negates the word of possibility before it, not the talking after it:
    a negation before that word ("Je ne peux pas parler à quelqu'un ?", "Ne puis-je pas ...?"),
    or the negation after it and a subject between, with the request right after ("Kann ich
    nicht mit einem Menschen sprechen?", "Kan ik niet met een mens spreken?"). Right after the
    word of possibility, it is "may I not" ("Можно не разговаривать с оператором?", "Posso non
    parlare con un operatore?", "Puis-je ne pas parler à un conseiller ?"): no request."""
    before = near[: negation.start()]
    possible = list(_POSSIBLE.finditer(before))
    if not possible:
        return False
    if any(n.end() <= possible[-1].start() for n in _NEGATION.finditer(before)):
        return True
    between = before[possible[-1].end() :]
    return (
        between.strip() != ""
        and _NEGATION.search(between) is None
        and near[negation.end() :].strip() == ""
    )


def match_human(text: str) -> str | None:
    """The "human" intent's pattern check (bot.skills.router.Intent.match)."""
    return text if asks_for_person(text) else None


class KeywordRules:
    """The operator's keyword rules: whole words or phrases, case-insensitive."""

    def __init__(self, keywords: Iterable[str]) -> None:
        words = [k.strip() for k in keywords if k.strip()]
        self._rules = [(k, re.compile(rf"(?<!\w){re.escape(k)}(?!\w)", re.I)) for k in words]

    def match(self, text: str) -> str | None:
        """The first keyword found in `text`, as the operator wrote it; None: none."""
        for keyword, rule in self._rules:
            if rule.search(text):
                return keyword
        return None
