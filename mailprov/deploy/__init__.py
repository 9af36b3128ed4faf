"""Deployment with Ansible: the runner behind ``mailprov deploy``, the pre-flight, the probe and the demo.

Modules:
  runner     runs ``ansible-playbook`` with mailprov's event callback; renders progress and a summary
  preflight  the controller-side DNS gate: host names, addresses, PTR and MX agree with the inventory
  probe      the live proof after a deploy: ports, banners, TLS, relay refusal, submission, POP3
  daemon     start/stop ``mailprov serve`` with a pid file where there is no systemd
  wheel      build the mailprov wheel on the controller, with a content digest for idempotent installs
  usersync   make a users file and an aliases file match a desired state (used by the users role)
  demo       the embedded default: two mail domains on this machine, end to end
"""
