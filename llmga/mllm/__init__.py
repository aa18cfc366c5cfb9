"""The LLMGA assistant: checkpoint loading, chat templates, image preprocessing, chat sessions."""
