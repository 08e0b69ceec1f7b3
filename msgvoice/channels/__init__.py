"""Chat channels (http, console, telegram, imessage, the OpenAI speech API). Each talks to the
chat wing only through `msgvoice.chat.port`, and to the speech wing only through its front door."""
