"""The article's Keras experiment, in its protocol and a fair one."""
