"""The portal: vmflow's pages for tenants and operators, served by the API at ``/``.

Pages are rendered on the server (Jinja2) from the API's own routes, called in process with the
signed-in user's token, so the API's authorization, validation and audit apply to every click
unchanged. htmx refreshes the live parts of a page when the event stream says something changed;
xterm.js draws the console. Both are installed from the npm registry at install time and served
from here: a browser loads nothing from anywhere else.
"""
