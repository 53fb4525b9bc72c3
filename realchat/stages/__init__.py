"""Pipeline stages. Each stage reads its inputs (a source or a parent stage's artifact), writes one
artifact folder atomically (see :mod:`realchat.runs`), and documents it with a card."""
