"""Deployment with Ansible: the runner behind ``mailprov deploy``, the probe and the demo.

The pre-flight DNS gate has no module here: the ``mailprov_preflight`` role runs ``mailprov check``
(through ``python -m mailprov.deploy``) on the controller before anything is changed on a host.

Modules:
  __main__   ``python -m mailprov.deploy ARGS``: the ``mailprov`` command line, for venvs without the script
  runner     runs ``ansible-playbook`` with mailprov's event callback; renders progress and a summary
  probe      the live proof after a deploy: ports, banners, TLS, relay refusal, submission, POP3
  daemon     start/stop ``mailprov serve`` with a pid file where there is no systemd
  wheel      build the mailprov wheel on the controller, with a content digest for idempotent installs
  usersync   make a users file and an aliases file match a desired state (used by the users role)
  demo       the embedded default: two mail domains on this machine, end to end
"""
