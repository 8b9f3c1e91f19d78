"""The sentences Parley itself says to users (errors, notices), in the languages it speaks.

gettext's model without the tooling: the English sentence is the key, so the code keeps
reading in English and a sentence missing here is simply said in English. `{fields}` in a
sentence are filled in after the lookup, so numbers and names stay out of the catalog.

    say(BackendTimeout.user_message, "de")
    say(TOO_LONG, "pt-BR", length=9000, limit=8000)

Which language a user gets is decided by the caller: their /lang, else what the platform
reports for them, else their message's detected language, else the operator's default.
"""

from __future__ import annotations

from collections.abc import Mapping

# Every sentence below has every one of these (tests/test_text_phrases.py checks it).
LANGUAGES = ("de", "fr", "es", "it", "pt", "nl", "pl", "ru", "uk", "tr", "ar", "zh", "ja")

GENERIC = "Something went wrong on my side. Please try again in a moment."
UNAVAILABLE = "The language model is not answering right now. Please try again shortly."
NO_MODEL = (
    "No language model is configured, so I can only run commands (try /help). "
    "The operator can set one with PARLEY_BACKEND__KIND=vllm or openai (see docs/backends.md)."
)
TIMEOUT = "The language model took too long to answer. Please try again."
CONTEXT_TOO_LONG = "This conversation is too long for the model. Send /reset to start afresh."
UNHANDLED_INPUT = "I could not handle that message."
RATE_LIMITED = (
    "You are sending messages too quickly, so I skipped this one. "
    "Please wait a minute and send it again."
)
TOO_LONG = (
    "That message is too long ({length} characters; the limit is {limit}). "
    "Please send a shorter one."
)
CUT_OFF = "[The reply was cut off.]"
STOPPED = "[Stopped.]"
NOT_ALLOWED = "Sorry, this bot is private and I can't talk with you here."
ADMINS_ONLY = "Only an admin of this group can change that."
NO_DOWNLOAD = "I could not download that document. Please try again."
MEDIA = (
    "I can read text messages and documents (plain text, Markdown, HTML or PDF up to {mb} MB), "
    "but not photos, voice messages, videos or stickers."
)

CATALOG: Mapping[str, Mapping[str, str]] = {
    GENERIC: {
        "de": "Bei mir ist etwas schiefgelaufen. Bitte versuche es gleich noch einmal.",
        "fr": "Un problème est survenu de mon côté. Réessayez dans un instant.",
        "es": "Algo ha fallado por mi parte. Inténtalo de nuevo en un momento.",
        "it": "Qualcosa è andato storto da parte mia. Riprova tra un momento.",
        "pt": "Algo deu errado do meu lado. Tente novamente daqui a pouco.",
        "nl": "Er ging bij mij iets mis. Probeer het zo nog eens.",
        "pl": "Coś poszło nie tak po mojej stronie. Spróbuj ponownie za chwilę.",
        "ru": "У меня что-то пошло не так. Попробуйте ещё раз через минуту.",
        "uk": "У мене щось пішло не так. Спробуйте ще раз за хвилину.",
        "tr": "Benim tarafımda bir sorun oluştu. Lütfen birazdan tekrar deneyin.",
        "ar": "حدث خطأ من جهتي. يرجى المحاولة مرة أخرى بعد قليل.",
        "zh": "我这边出了点问题，请稍后再试。",
        "ja": "こちらで問題が発生しました。少し待ってからもう一度お試しください。",
    },
    UNAVAILABLE: {
        "de": "Das Sprachmodell antwortet gerade nicht. Bitte versuche es gleich noch einmal.",
        "fr": "Le modèle de langue ne répond pas pour le moment. Réessayez bientôt.",
        "es": "El modelo de lenguaje no responde en este momento. Inténtalo de nuevo en breve.",
        "it": "Il modello linguistico non risponde in questo momento. Riprova tra poco.",
        "pt": "O modelo de linguagem não está respondendo agora. Tente novamente em breve.",
        "nl": "Het taalmodel antwoordt op dit moment niet. Probeer het straks opnieuw.",
        "pl": "Model językowy teraz nie odpowiada. Spróbuj ponownie za chwilę.",
        "ru": "Языковая модель сейчас не отвечает. Попробуйте ещё раз чуть позже.",
        "uk": "Мовна модель зараз не відповідає. Спробуйте ще раз трохи згодом.",
        "tr": "Dil modeli şu anda yanıt vermiyor. Lütfen kısa süre sonra tekrar deneyin.",
        "ar": "نموذج اللغة لا يستجيب حاليًا. يرجى المحاولة مرة أخرى قريبًا.",
        "zh": "语言模型暂时没有响应，请稍后再试。",
        "ja": "言語モデルが現在応答していません。しばらくしてからもう一度お試しください。",
    },
    NO_MODEL: {
        "de": "Es ist kein Sprachmodell eingerichtet, ich kann nur Befehle ausführen (siehe "
        "/help). Der Betreiber kann eines mit PARLEY_BACKEND__KIND=vllm oder openai einrichten "
        "(siehe docs/backends.md).",
        "fr": "Aucun modèle de langue n'est configuré : je ne peux qu'exécuter des commandes "
        "(essayez /help). L'opérateur peut en configurer un avec PARLEY_BACKEND__KIND=vllm ou "
        "openai (voir docs/backends.md).",
        "es": "No hay ningún modelo de lenguaje configurado, así que solo puedo ejecutar "
        "comandos (prueba /help). El operador puede configurar uno con "
        "PARLEY_BACKEND__KIND=vllm u openai (ver docs/backends.md).",
        "it": "Nessun modello linguistico è configurato, quindi posso solo eseguire comandi "
        "(prova /help). L'operatore può configurarne uno con PARLEY_BACKEND__KIND=vllm o "
        "openai (vedi docs/backends.md).",
        "pt": "Nenhum modelo de linguagem está configurado, então só posso executar comandos "
        "(experimente /help). O operador pode configurar um com PARLEY_BACKEND__KIND=vllm ou "
        "openai (veja docs/backends.md).",
        "nl": "Er is geen taalmodel ingesteld, dus ik kan alleen opdrachten uitvoeren (probeer "
        "/help). De beheerder kan er een instellen met PARLEY_BACKEND__KIND=vllm of openai "
        "(zie docs/backends.md).",
        "pl": "Nie skonfigurowano modelu językowego, więc mogę tylko wykonywać polecenia "
        "(spróbuj /help). Operator może go ustawić przez PARLEY_BACKEND__KIND=vllm lub openai "
        "(zob. docs/backends.md).",
        "ru": "Языковая модель не настроена, поэтому я могу только выполнять команды "
        "(попробуйте /help). Оператор может подключить её через PARLEY_BACKEND__KIND=vllm или "
        "openai (см. docs/backends.md).",
        "uk": "Мовну модель не налаштовано, тож я можу лише виконувати команди (спробуйте "
        "/help). Оператор може підключити її через PARLEY_BACKEND__KIND=vllm або openai (див. "
        "docs/backends.md).",
        "tr": "Yapılandırılmış bir dil modeli yok, bu yüzden yalnızca komutları çalıştırabilirim "
        "(/help deneyin). Operatör PARLEY_BACKEND__KIND=vllm veya openai ile bir model "
        "ayarlayabilir (bkz. docs/backends.md).",
        "ar": "لم يتم إعداد نموذج لغة، لذا يمكنني تنفيذ الأوامر فقط (جرّب /help). يمكن للمشغّل "
        "إعداد نموذج عبر PARLEY_BACKEND__KIND=vllm أو openai (راجع docs/backends.md).",
        "zh": "尚未配置语言模型，所以我只能执行命令（试试 /help）。运维人员可以通过 "
        "PARLEY_BACKEND__KIND=vllm 或 openai 进行配置（见 docs/backends.md）。",
        "ja": "言語モデルが設定されていないため、コマンドしか実行できません（/help をお試し"
        "ください）。運用者は PARLEY_BACKEND__KIND=vllm または openai で設定できます"
        "（docs/backends.md を参照）。",
    },
    TIMEOUT: {
        "de": "Das Sprachmodell hat zu lange für die Antwort gebraucht. Bitte versuche es noch "
        "einmal.",
        "fr": "Le modèle de langue a mis trop de temps à répondre. Veuillez réessayer.",
        "es": "El modelo de lenguaje tardó demasiado en responder. Inténtalo de nuevo.",
        "it": "Il modello linguistico ha impiegato troppo tempo a rispondere. Riprova.",
        "pt": "O modelo de linguagem demorou demais para responder. Tente novamente.",
        "nl": "Het taalmodel deed er te lang over om te antwoorden. Probeer het opnieuw.",
        "pl": "Model językowy zbyt długo nie odpowiadał. Spróbuj ponownie.",
        "ru": "Языковая модель отвечала слишком долго. Попробуйте ещё раз.",
        "uk": "Мовна модель відповідала надто довго. Спробуйте ще раз.",
        "tr": "Dil modelinin yanıt vermesi çok uzun sürdü. Lütfen tekrar deneyin.",
        "ar": "استغرق نموذج اللغة وقتًا طويلًا للرد. يرجى المحاولة مرة أخرى.",
        "zh": "语言模型响应超时，请重试。",
        "ja": "言語モデルの応答に時間がかかりすぎました。もう一度お試しください。",
    },
    CONTEXT_TOO_LONG: {
        "de": "Diese Unterhaltung ist zu lang für das Modell. Sende /reset, um neu zu beginnen.",
        "fr": "Cette conversation est trop longue pour le modèle. Envoyez /reset pour recommencer.",
        "es": "Esta conversación es demasiado larga para el modelo. Envía /reset para empezar "
        "de nuevo.",
        "it": "Questa conversazione è troppo lunga per il modello. Invia /reset per ricominciare.",
        "pt": "Esta conversa é longa demais para o modelo. Envie /reset para recomeçar.",
        "nl": "Dit gesprek is te lang voor het model. Stuur /reset om opnieuw te beginnen.",
        "pl": "Ta rozmowa jest za długa dla modelu. Wyślij /reset, aby zacząć od nowa.",
        "ru": "Этот разговор слишком длинный для модели. Отправьте /reset, чтобы начать заново.",
        "uk": "Ця розмова задовга для моделі. Надішліть /reset, щоб почати спочатку.",
        "tr": "Bu konuşma model için çok uzun. Baştan başlamak için /reset gönderin.",
        "ar": "هذه المحادثة طويلة جدًا بالنسبة للنموذج. أرسل /reset للبدء من جديد.",
        "zh": "这段对话对模型来说太长了。发送 /reset 重新开始。",
        "ja": "この会話はモデルには長すぎます。/reset を送ってやり直してください。",
    },
    UNHANDLED_INPUT: {
        "de": "Mit dieser Nachricht konnte ich nichts anfangen.",
        "fr": "Je n'ai pas pu traiter ce message.",
        "es": "No he podido procesar ese mensaje.",
        "it": "Non sono riuscito a gestire quel messaggio.",
        "pt": "Não consegui processar essa mensagem.",
        "nl": "Ik kon dat bericht niet verwerken.",
        "pl": "Nie udało mi się obsłużyć tej wiadomości.",
        "ru": "Я не смог обработать это сообщение.",
        "uk": "Я не зміг обробити це повідомлення.",
        "tr": "Bu mesajı işleyemedim.",
        "ar": "لم أتمكن من معالجة هذه الرسالة.",
        "zh": "我无法处理这条消息。",
        "ja": "そのメッセージを処理できませんでした。",
    },
    RATE_LIMITED: {
        "de": "Du schickst Nachrichten zu schnell, deshalb habe ich diese übersprungen. Bitte "
        "warte eine Minute und schicke sie dann noch einmal.",
        "fr": "Vous envoyez des messages trop vite, j'ai donc ignoré celui-ci. Attendez une "
        "minute puis renvoyez-le.",
        "es": "Estás enviando mensajes demasiado rápido, así que he omitido este. Espera un "
        "minuto y vuelve a enviarlo.",
        "it": "Stai inviando messaggi troppo in fretta, quindi ho saltato questo. Aspetta un "
        "minuto e invialo di nuovo.",
        "pt": "Você está enviando mensagens rápido demais, então ignorei esta. Espere um minuto "
        "e envie-a novamente.",
        "nl": "Je stuurt te snel berichten, daarom heb ik dit bericht overgeslagen. Wacht een "
        "minuut en stuur het opnieuw.",
        "pl": "Wysyłasz wiadomości zbyt szybko, więc pominąłem tę. Odczekaj minutę i wyślij ją "
        "ponownie.",
        "ru": "Вы отправляете сообщения слишком часто, поэтому я пропустил это. Подождите "
        "минуту и отправьте его снова.",
        "uk": "Ви надсилаєте повідомлення надто часто, тому я пропустив це. Зачекайте хвилину "
        "й надішліть його знову.",
        "tr": "Çok hızlı mesaj gönderiyorsunuz, bu yüzden bunu atladım. Lütfen bir dakika "
        "bekleyip tekrar gönderin.",
        "ar": "أنت ترسل الرسائل بسرعة كبيرة، لذا تجاوزت هذه الرسالة. يرجى الانتظار دقيقة ثم "
        "إرسالها مرة أخرى.",
        "zh": "你发送消息太快了，所以我跳过了这一条。请等一分钟后再发送。",
        "ja": "メッセージの送信が速すぎるため、このメッセージはスキップしました。1分ほど待って"
        "から、もう一度送ってください。",
    },
    TOO_LONG: {
        "de": "Diese Nachricht ist zu lang ({length} Zeichen; erlaubt sind {limit}). Bitte "
        "schicke eine kürzere.",
        "fr": "Ce message est trop long ({length} caractères ; la limite est de {limit}). "
        "Envoyez-en un plus court.",
        "es": "Ese mensaje es demasiado largo ({length} caracteres; el límite es {limit}). "
        "Envía uno más corto.",
        "it": "Quel messaggio è troppo lungo ({length} caratteri; il limite è {limit}). "
        "Inviane uno più breve.",
        "pt": "Essa mensagem é longa demais ({length} caracteres; o limite é {limit}). Envie "
        "uma mais curta.",
        "nl": "Dat bericht is te lang ({length} tekens; de limiet is {limit}). Stuur een "
        "korter bericht.",
        "pl": "Ta wiadomość jest za długa ({length} znaków; limit to {limit}). Wyślij krótszą.",
        "ru": "Это сообщение слишком длинное ({length} символов; предел — {limit}). Отправьте "
        "более короткое.",
        "uk": "Це повідомлення задовге ({length} символів; межа — {limit}). Надішліть коротше.",
        "tr": "Bu mesaj çok uzun ({length} karakter; sınır {limit}). Lütfen daha kısa bir "
        "mesaj gönderin.",
        "ar": "هذه الرسالة طويلة جدًا ({length} حرفًا؛ الحد الأقصى {limit}). يرجى إرسال رسالة أقصر.",
        "zh": "这条消息太长了（{length} 个字符；上限为 {limit}）。请发送更短的消息。",
        "ja": "このメッセージは長すぎます（{length} 文字、上限は {limit} 文字）。もっと短い"
        "メッセージを送ってください。",
    },
    CUT_OFF: {
        "de": "[Die Antwort wurde abgebrochen.]",
        "fr": "[La réponse a été interrompue.]",
        "es": "[La respuesta se ha cortado.]",
        "it": "[La risposta è stata interrotta.]",
        "pt": "[A resposta foi interrompida.]",
        "nl": "[Het antwoord is afgebroken.]",
        "pl": "[Odpowiedź została przerwana.]",
        "ru": "[Ответ оборвался.]",
        "uk": "[Відповідь обірвалася.]",
        "tr": "[Yanıt yarıda kesildi.]",
        "ar": "[انقطع الرد.]",
        "zh": "[回复被中断。]",
        "ja": "[回答が途中で途切れました。]",
    },
    STOPPED: {
        "de": "[Angehalten.]",
        "fr": "[Arrêté.]",
        "es": "[Detenido.]",
        "it": "[Interrotto.]",
        "pt": "[Interrompido.]",
        "nl": "[Gestopt.]",
        "pl": "[Zatrzymano.]",
        "ru": "[Остановлено.]",
        "uk": "[Зупинено.]",
        "tr": "[Durduruldu.]",
        "ar": "[تم الإيقاف.]",
        "zh": "[已停止。]",
        "ja": "[停止しました。]",
    },
    NOT_ALLOWED: {
        "de": "Entschuldigung, dieser Bot ist privat und ich kann hier nicht mit dir sprechen.",
        "fr": "Désolé, ce bot est privé et je ne peux pas discuter avec vous ici.",
        "es": "Lo siento, este bot es privado y no puedo hablar contigo aquí.",
        "it": "Mi dispiace, questo bot è privato e non posso parlare con te qui.",
        "pt": "Desculpe, este bot é privado e não posso conversar com você aqui.",
        "nl": "Sorry, deze bot is privé en ik kan hier niet met je praten.",
        "pl": "Przepraszam, ten bot jest prywatny i nie mogę tu z tobą rozmawiać.",
        "ru": "Извините, это частный бот, и я не могу общаться с вами здесь.",
        "uk": "Вибачте, це приватний бот, і я не можу спілкуватися з вами тут.",
        "tr": "Üzgünüm, bu bot özel ve burada sizinle konuşamam.",
        "ar": "عذرًا، هذا البوت خاص ولا يمكنني التحدث معك هنا.",
        "zh": "抱歉，这是一个私人机器人，我无法在这里与你交谈。",
        "ja": "申し訳ありませんが、このボットは非公開のため、ここではお話しできません。",
    },
    ADMINS_ONLY: {
        "de": "Nur ein Admin dieser Gruppe kann das ändern.",
        "fr": "Seul un administrateur de ce groupe peut modifier cela.",
        "es": "Solo un administrador de este grupo puede cambiar eso.",
        "it": "Solo un amministratore di questo gruppo può modificarlo.",
        "pt": "Só um administrador deste grupo pode alterar isso.",
        "nl": "Alleen een beheerder van deze groep kan dat wijzigen.",
        "pl": "Tylko administrator tej grupy może to zmienić.",
        "ru": "Изменить это может только администратор группы.",
        "uk": "Змінити це може лише адміністратор групи.",
        "tr": "Bunu yalnızca bu grubun bir yöneticisi değiştirebilir.",
        "ar": "لا يمكن تغيير ذلك إلا من قِبل مشرف هذه المجموعة.",
        "zh": "只有本群管理员可以更改此设置。",
        "ja": "これを変更できるのはこのグループの管理者だけです。",
    },
    NO_DOWNLOAD: {
        "de": "Ich konnte dieses Dokument nicht herunterladen. Bitte versuche es noch einmal.",
        "fr": "Je n'ai pas pu télécharger ce document. Veuillez réessayer.",
        "es": "No he podido descargar ese documento. Inténtalo de nuevo.",
        "it": "Non sono riuscito a scaricare quel documento. Riprova.",
        "pt": "Não consegui baixar esse documento. Tente novamente.",
        "nl": "Ik kon dat document niet downloaden. Probeer het opnieuw.",
        "pl": "Nie udało mi się pobrać tego dokumentu. Spróbuj ponownie.",
        "ru": "Не удалось загрузить этот документ. Попробуйте ещё раз.",
        "uk": "Не вдалося завантажити цей документ. Спробуйте ще раз.",
        "tr": "Bu belgeyi indiremedim. Lütfen tekrar deneyin.",
        "ar": "تعذّر عليّ تنزيل هذا المستند. يرجى المحاولة مرة أخرى.",
        "zh": "我无法下载该文档，请重试。",
        "ja": "そのドキュメントをダウンロードできませんでした。もう一度お試しください。",
    },
    MEDIA: {
        "de": "Ich kann Textnachrichten und Dokumente lesen (Text, Markdown, HTML oder PDF bis "
        "{mb} MB), aber keine Fotos, Sprachnachrichten, Videos oder Sticker.",
        "fr": "Je sais lire les messages texte et les documents (texte, Markdown, HTML ou PDF "
        "jusqu'à {mb} Mo), mais pas les photos, messages vocaux, vidéos ou stickers.",
        "es": "Puedo leer mensajes de texto y documentos (texto, Markdown, HTML o PDF de hasta "
        "{mb} MB), pero no fotos, mensajes de voz, vídeos ni stickers.",
        "it": "Posso leggere messaggi di testo e documenti (testo, Markdown, HTML o PDF fino a "
        "{mb} MB), ma non foto, messaggi vocali, video o sticker.",
        "pt": "Consigo ler mensagens de texto e documentos (texto, Markdown, HTML ou PDF de até "
        "{mb} MB), mas não fotos, mensagens de voz, vídeos ou figurinhas.",
        "nl": "Ik kan tekstberichten en documenten lezen (tekst, Markdown, HTML of PDF tot "
        "{mb} MB), maar geen foto's, spraakberichten, video's of stickers.",
        "pl": "Potrafię czytać wiadomości tekstowe i dokumenty (tekst, Markdown, HTML lub PDF "
        "do {mb} MB), ale nie zdjęcia, wiadomości głosowe, filmy ani naklejki.",
        "ru": "Я умею читать текстовые сообщения и документы (текст, Markdown, HTML или PDF до "
        "{mb} МБ), но не фото, голосовые сообщения, видео и стикеры.",
        "uk": "Я вмію читати текстові повідомлення й документи (текст, Markdown, HTML або PDF "
        "до {mb} МБ), але не фото, голосові повідомлення, відео та стікери.",
        "tr": "Metin mesajlarını ve belgeleri (düz metin, Markdown, HTML veya {mb} MB'a kadar "
        "PDF) okuyabilirim; fotoğrafları, sesli mesajları, videoları ve çıkartmaları "
        "okuyamam.",
        "ar": "يمكنني قراءة الرسائل النصية والمستندات (نص عادي أو Markdown أو HTML أو PDF حتى "
        "{mb} ميغابايت)، لكن لا يمكنني قراءة الصور أو الرسائل الصوتية أو الفيديو أو "
        "الملصقات.",
        "zh": "我可以阅读文字消息和文档（纯文本、Markdown、HTML 或不超过 {mb} MB 的 PDF），"
        "但无法识别图片、语音、视频或贴纸。",
        "ja": "テキストメッセージと文書（プレーンテキスト、Markdown、HTML、{mb} MB までの "
        "PDF）は読めますが、写真、ボイスメッセージ、動画、スタンプは読めません。",
    },
}


def base_language(tag: str | None) -> str:
    """ "pt-BR" -> "pt", "zh_Hans" -> "zh", None -> ""."""
    if not tag:
        return ""
    return tag.replace("_", "-").split("-", 1)[0].lower()


def say(sentence: str, language: str | None, **fields: object) -> str:
    """`sentence` in `language` (an IETF tag; unknown ones get English), fields filled in."""
    text = CATALOG.get(sentence, {}).get(base_language(language), sentence)
    return text.format(**fields) if fields else text
