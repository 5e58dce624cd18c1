"""Config files shipped with treerpo: the embedded demo and the paper recipe."""
