// Small behaviours of every page, kept out of the markup (no inline script anywhere):
// a form with data-confirm asks first; a select with data-autosubmit sends its form on change.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
document.addEventListener("change", (event) => {
  if (event.target.matches && event.target.matches("select[data-autosubmit]")) event.target.form.submit();
});
