"""Recipes: the YAML that declares a build's steps (:mod:`.schema`), their inputs (:mod:`.refs`),
how they are loaded and checked (:mod:`.load`) and how errors read (:mod:`.messages`)."""
