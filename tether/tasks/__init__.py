"""Built-in tasks: prompts, demonstrations and gold scorers.

`registry` names the built-in tasks and says what a task provides (`Task`); `gold` loads a gold
scorer by name and scores with it; `cli` is the command line every task module has; `sentiment`
and `answers` are the tasks.
"""
