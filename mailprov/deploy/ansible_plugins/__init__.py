"""Ansible plugins shipped with mailprov (loaded by :mod:`mailprov.deploy.runner` through ANSIBLE_CALLBACK_PLUGINS)."""
